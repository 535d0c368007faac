/* vnetdp-cni-client: the vnetdp CNI plugins on a node whose agent runs in a
 * container (the vnetdp-node DaemonSet).
 *
 * The runtime (containerd, CRI-O) runs CNI plugins on the host, where the
 * image's Python, bcc and pyroute2 do not exist. So the host's plugins are
 * this static binary, called by two small wrappers (`vnetdp`, `vnetdp-ipam`,
 * written by vnetdp-node-init) that set the node's defaults and name the
 * plugin. It hands the call to the node agent exactly as cni/vnetdp's fast
 * path does -- the framing of vnetdp/agent/wire.py, with the open CNI_NETNS
 * passed as a descriptor (SCM_RIGHTS) -- and prints the agent's reply.
 * The Python entry point runs a call itself when no agent answers; this one
 * cannot, so it retries a call whose worker died (every command is
 * idempotent) and otherwise answers with CNI code 11 ("try again later"):
 * the runtime retries while the agent (re)starts.
 *
 * Usage: vnetdp-cni-client PLUGIN   (PLUGIN: vnetdp or vnetdp-ipam)
 * Socket: $VNETDP_STATE_DIR/agent.sock (default /var/lib/vnetdp/agent.sock).
 * Build:  cc -static -O2 -o vnetdp-cni-client cni-client.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REQUEST (1 << 20)   /* wire.MAX_REQUEST */
#define MAX_REPLY (1 << 30)     /* what wire.call accepts */
#define FIRST_CHUNK 65536       /* wire.call sends the descriptor with the first 64 KiB */
#define ATTEMPTS 3
#define CODE_INVALID_CONFIG 7
#define CODE_TRY_AGAIN 11
#define DEFAULT_STATE_DIR "/var/lib/vnetdp"

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) {
            perror("vnetdp-cni-client");
            exit(1);
        }
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

/* Reads fd to its end into b; -1 past limit bytes or on a read error. */
static int read_all(int fd, struct buf *b, size_t limit)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (b->len + (size_t)n > limit)
            return -1;
        put(b, chunk, (size_t)n);
    }
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The config's cniVersion (a plain scan: errors must answer in it), else 1.0.0. */
static void cni_version(const struct buf *in, char *out, size_t size)
{
    static const char key[] = "\"cniVersion\"";
    const char *end = in->data + in->len, *p = in->data ? memmem(in->data, in->len, key, sizeof key - 1) : NULL;
    snprintf(out, size, "1.0.0");
    if (!p)
        return;
    for (p += sizeof key - 1; p < end && strchr(" \t\r\n:", *p); p++)
        ;
    if (p >= end || *p != '"')
        return;
    const char *start = ++p;
    while (p < end && *p != '"' && *p != '\\' && (size_t)(p - start) < size - 1)
        p++;
    if (p < end && *p == '"' && p > start)
        snprintf(out, size, "%.*s", (int)(p - start), start);
}

static void json_string(struct buf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        char esc[8];
        if (*s == '"' || *s == '\\') {
            esc[0] = '\\';
            esc[1] = *s;
            put(b, esc, 2);
        } else if ((unsigned char)*s < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s);
            put(b, esc, 6);
        } else {
            put(b, s, 1);
        }
    }
    put(b, "\"", 1);
}

/* The spec's error object on stdout, exit code 1. */
static int cni_error(const struct buf *in, int code, const char *msg, const char *details)
{
    char version[32];
    struct buf out = {0};
    cni_version(in, version, sizeof version);
    put(&out, "{\"cniVersion\": ", 15);
    json_string(&out, version);
    char head[32];
    snprintf(head, sizeof head, ", \"code\": %d, \"msg\": ", code);
    put(&out, head, strlen(head));
    json_string(&out, msg);
    put(&out, ", \"details\": ", 13);
    json_string(&out, details);
    put(&out, "}\n", 2);
    write_all(1, out.data, out.len);
    return 1;
}

/* One call through the agent: 0 with rc set when it answered whole;
 * -1 when it did not (no agent listening, or a worker died mid-call). */
static int call(const char *path, const struct buf *request, int netns_fd, int *rc)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), result = -1;
    struct buf reply = {0};
    if (s < 0)
        return -1;
    memcpy(addr.sun_path, path, strlen(path));
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0)
        goto out;

    size_t first = request->len < FIRST_CHUNK ? request->len : FIRST_CHUNK;
    struct iovec iov = {.iov_base = request->data, .iov_len = first};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (netns_fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &netns_fd, sizeof(int));
    }
    ssize_t sent;
    do
        sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        goto out;
    for (size_t off = (size_t)sent; off < request->len;) {
        ssize_t n = send(s, request->data + off, request->len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out;
        off += (size_t)n;
    }
    shutdown(s, SHUT_WR);
    if (read_all(s, &reply, MAX_REPLY) != 0)
        goto out;

    /* <exit code> <stdout length>\n<stdout><stderr> (wire.decode_reply) */
    char *nl = reply.data ? memchr(reply.data, '\n', reply.len) : NULL;
    long code, out_len;
    char tail;
    if (!nl)
        goto out;
    *nl = '\0';
    if (sscanf(reply.data, "%ld %ld%c", &code, &out_len, &tail) != 2 || out_len < 0)
        goto out;
    size_t body = reply.len - (size_t)(nl + 1 - reply.data);
    if ((size_t)out_len > body)
        goto out;
    write_all(1, nl + 1, (size_t)out_len);
    write_all(2, nl + 1 + out_len, body - (size_t)out_len);
    *rc = (int)code;
    result = 0;
out:
    free(reply.data);
    close(s);
    return result;
}

int main(int argc, char **argv)
{
    struct buf in = {0}, request = {0}, env = {0};
    if (read_all(0, &in, MAX_REQUEST) != 0)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: stdin unreadable or larger than 1 MiB", "");
    if (argc != 2 || !*argv[1] || strchr(argv[1], '\n'))
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp-cni-client is not a CNI plugin itself",
                         "the node's plugins are the vnetdp and vnetdp-ipam wrappers beside it, "
                         "which call it with the plugin's name");

    const char *state = getenv("VNETDP_STATE_DIR");
    char path[sizeof((struct sockaddr_un *)0)->sun_path];
    if (!state || !*state)
        state = DEFAULT_STATE_DIR;
    if ((size_t)snprintf(path, sizeof path, "%s/agent.sock", state) >= sizeof path)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: the agent socket's path is too long", state);

    for (char **e = environ; *e; e++) {
        if (env.len)
            put(&env, "", 1);
        put(&env, *e, strlen(*e));
    }
    char head[64];
    put(&request, argv[1], strlen(argv[1]));
    snprintf(head, sizeof head, "\n%zu\n", env.len);
    put(&request, head, strlen(head));
    put(&request, env.data, env.len);
    put(&request, in.data, in.len);
    if (request.len > MAX_REQUEST)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: the call is larger than 1 MiB", "");

    /* The netns as a descriptor: the agent lives in another mount namespace.
     * Never blocks, even on a FIFO; a path that does not open goes as a path. */
    const char *netns = getenv("CNI_NETNS");
    int netns_fd = netns && *netns ? open(netns, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;

    int rc;
    for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
        if (attempt)
            usleep(200000);
        if (call(path, &request, netns_fd, &rc) == 0)
            return rc;
    }
    char details[sizeof path + 160];
    snprintf(details, sizeof details,
             "no vnetdp agent answered at %s: the vnetdp-node pod of this node is not running (yet)", path);
    return cni_error(&in, CODE_TRY_AGAIN, "vnetdp: the node agent is not running; try again later", details);
}
