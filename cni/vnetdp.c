/* The vnetdp CNI plugins, compiled: a call goes to the node agent without
 * starting Python. The request and the reply are the framing of
 * vnetdp/agent/wire.py, which defines it (the environment and stdin in, the
 * open CNI_NETNS passed as a descriptor with the first bytes (SCM_RIGHTS),
 * exit code, stdout and stderr back); tests/unit/test_cni_client.py holds
 * this file to it. One source, two builds:
 *
 * - the entry point `vnetdp install` compiles for its node (vnetdp/install.py)
 *   and installs as `vnetdp` and `vnetdp-ipam`: the name it is called by is
 *   the plugin. VNETDP_DEFAULTS are the node's defaults ("NAME=VALUE", ...:
 *   set unless the caller set them), VNETDP_PYTHON and VNETDP_ENTRY the
 *   interpreter and the Python entry point (cni/vnetdp). Whenever the agent
 *   does not answer the call whole (none running, VNETDP_NO_AGENT set, a
 *   worker that died mid-call, a call larger than the agent takes) it execs
 *   the Python entry point, which runs the call itself: same code, same
 *   result, every command being idempotent.
 * - the node image's host client (deploy/kubernetes/Containerfile: static, no
 *   VNETDP_PYTHON), `vnetdp-cni-client PLUGIN` behind the wrappers
 *   vnetdp-node-init writes. The host has no Python of the image's, so it
 *   retries a call whose worker died and otherwise answers CNI code 11 (try
 *   again later), which runtimes retry while the agent (re)starts.
 *
 * A CNI_NETNS that does not open goes as a path only, as from the Python entry
 * point: the agent then answers as the plugin would (code 4 for ADD and CHECK
 * naming the path; DEL succeeds).
 * Socket: $VNETDP_STATE_DIR/agent.sock (default /var/lib/vnetdp/agent.sock).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REQUEST (1 << 20)   /* wire.MAX_REQUEST */
#define MAX_REPLY (1 << 30)     /* what wire.call accepts */
#define FIRST_SEND 65536        /* wire.FIRST_SEND: the descriptor goes with these bytes */
#define ATTEMPTS 3
#define CODE_INVALID_CONFIG 7
#define CODE_TRY_AGAIN 11
#define DEFAULT_STATE_DIR "/var/lib/vnetdp"  /* vnetdp.defaults.DEFAULT_STATE_DIR */

#ifndef VNETDP_DEFAULTS
#define VNETDP_DEFAULTS
#endif

/* vnetdp.cni.invoke.SELF_MARKER, in an ELF note near the start of the file
 * (invoke reads the first 4 KiB): an executable that carries it is never
 * called as a delegate, whatever it is named. */
__asm__(".pushsection .note.vnetdp, \"a\", @note\n"
        ".balign 4\n.long 2f - 1f\n.long 4f - 3f\n.long 1\n"
        "1: .asciz \"vnetdp\"\n2: .balign 4\n"
        "3: .asciz \"vnetdp-cni-entry-point\"\n4: .balign 4\n"
        ".popsection\n");

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
            perror("vnetdp");
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
    char version[32], head[32];
    struct buf out = {0};
    cni_version(in, version, sizeof version);
    put(&out, "{\"cniVersion\": ", 15);
    json_string(&out, version);
    snprintf(head, sizeof head, ", \"code\": %d, \"msg\": ", code);
    put(&out, head, strlen(head));
    json_string(&out, msg);
    put(&out, ", \"details\": ", 13);
    json_string(&out, details);
    put(&out, "}\n", 2);
    write_all(1, out.data, out.len);
    return 1;
}

/* A socket connected to the agent; -1 when none listens. */
static int agent_connect(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    memcpy(addr.sun_path, path, strlen(path));
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(s);
        return -1;
    }
    return s;
}

static int send_request(int s, const struct buf *request, int netns_fd)
{
    size_t first = request->len < FIRST_SEND ? request->len : FIRST_SEND;
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
        return -1;
    for (size_t off = (size_t)sent; off < request->len;) {
        ssize_t n = send(s, request->data + off, request->len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        off += (size_t)n;
    }
    return shutdown(s, SHUT_WR);
}

/* One call on a connected socket (closed here): 0 with rc set when the
 * agent answered whole, its stdout and stderr written out; -1 when it did not
 * (a worker that died mid-call), nothing written. */
static int call(int s, const struct buf *request, int netns_fd, int *rc)
{
    struct buf reply = {0};
    int result = -1;
    if (send_request(s, request, netns_fd) != 0 || read_all(s, &reply, MAX_REPLY) != 0)
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

#ifdef VNETDP_PYTHON
/* Run the call in-process through the Python entry point, told not to try the
 * agent again, with stdin as read (``in``) through a memfd. Returns only when
 * that cannot run. */
static int in_process(const char *plugin, const struct buf *in)
{
    char details[512];
    int fd = memfd_create("vnetdp-stdin", MFD_CLOEXEC);
    if (fd < 0 || write_all(fd, in->data, in->len) != 0 || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
        snprintf(details, sizeof details, "passing stdin on: %s", strerror(errno));
        return cni_error(in, CODE_TRY_AGAIN, "vnetdp: the call cannot run in-process", details);
    }
    close(fd);
    setenv("VNETDP_NO_AGENT", "1", 1);
    execv(VNETDP_PYTHON, (char *[]){VNETDP_PYTHON, "-S", VNETDP_ENTRY, (char *)plugin, NULL});
    snprintf(details, sizeof details, "%s %s: %s", VNETDP_PYTHON, VNETDP_ENTRY, strerror(errno));
    return cni_error(in, CODE_TRY_AGAIN, "vnetdp: the call cannot run in-process", details);
}
#endif

int main(int argc, char **argv)
{
    static const char *const node_defaults[] = {VNETDP_DEFAULTS NULL};
    struct buf in = {0}, request = {0}, env = {0};
#ifdef VNETDP_PYTHON
    /* As the Python entry point: the plugin is argv[1] when given, else the name called by. */
    const char *called = argc > 0 ? argv[0] : "vnetdp", *slash = strrchr(called, '/');
    const char *plugin = argc > 1 ? argv[1] : slash ? slash + 1 : called;
#else
    if (argc != 2 || !*argv[1] || strchr(argv[1], '\n')) {
        read_all(0, &in, MAX_REQUEST);
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp-cni-client is not a CNI plugin itself",
                         "the node's plugins are the vnetdp and vnetdp-ipam wrappers beside it, "
                         "which call it with the plugin's name");
    }
    const char *plugin = argv[1];
#endif
    for (const char *const *d = node_defaults; *d; d++) {
        const char *eq = strchr(*d, '=');
        char name[256];
        if (eq && (size_t)(eq - *d) < sizeof name) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - *d), *d);
            setenv(name, eq + 1, 0);
        }
    }

    const char *state = getenv("VNETDP_STATE_DIR");
    char path[sizeof((struct sockaddr_un *)0)->sun_path];
    if (!state || !*state)
        state = DEFAULT_STATE_DIR;
    int path_ok = (size_t)snprintf(path, sizeof path, "%s/agent.sock", state) < sizeof path;

#ifdef VNETDP_PYTHON
    if (read_all(0, &in, SIZE_MAX) != 0)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: stdin unreadable", strerror(errno));
#else
    if (read_all(0, &in, MAX_REQUEST) != 0)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: stdin unreadable or larger than 1 MiB", "");
    if (!path_ok)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: the agent socket's path is too long", state);
#endif

    for (char **e = environ; *e; e++) {
        if (env.len)
            put(&env, "", 1);
        put(&env, *e, strlen(*e));
    }
    char head[64];
    put(&request, plugin, strlen(plugin));
    snprintf(head, sizeof head, "\n%zu\n", env.len);
    put(&request, head, strlen(head));
    put(&request, env.data, env.len);
    put(&request, in.data, in.len);

    /* The netns as a descriptor: the agent may live in another mount namespace.
     * Never blocks, even on a FIFO; a path that does not open goes as a path. */
    const char *netns = getenv("CNI_NETNS");
    int netns_fd = netns && *netns ? open(netns, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;
    int rc;
#ifdef VNETDP_PYTHON
    const char *no_agent = getenv("VNETDP_NO_AGENT");
    int s = path_ok && !(no_agent && *no_agent) && request.len <= MAX_REQUEST ? agent_connect(path) : -1;
    if (s >= 0 && call(s, &request, netns_fd, &rc) == 0)
        return rc;
    return in_process(plugin, &in);
#else
    if (request.len > MAX_REQUEST)
        return cni_error(&in, CODE_INVALID_CONFIG, "vnetdp: the call is larger than 1 MiB", "");
    for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
        if (attempt)
            usleep(200000);
        int s = agent_connect(path);
        if (s >= 0 && call(s, &request, netns_fd, &rc) == 0)
            return rc;
    }
    char details[sizeof path + 160];
    snprintf(details, sizeof details,
             "no vnetdp agent answered at %s: the vnetdp-node pod of this node is not running (yet)", path);
    return cni_error(&in, CODE_TRY_AGAIN, "vnetdp: the node agent is not running; try again later", details);
#endif
}
