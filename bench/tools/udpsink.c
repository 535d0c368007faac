/* udpsink: counts UDP datagrams as fast as they come, busy-polling one CPU.
 *
 *   udpsink -a ADDR -p PORT [-c CPU]
 *
 * Binds ADDR:PORT, prints "ready", then spins on non-blocking recvmmsg
 * (never sleeping, so no wake-up sits on the path) until SIGTERM or SIGINT,
 * and prints one JSON line: datagrams received. SO_BUSY_POLL is not set: a
 * veth carries no NAPI id, so it would do nothing, except on a pod end with
 * an XDP program (veth NAPI), where it would move that topology's receive
 * work onto this CPU alone. The receive buffer is 4 MiB, so a scheduling
 * hiccup of this process is not counted as the path's loss.
 */
#include "common.h"

#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define RCVBUF (4 << 20)

int main(int argc, char **argv)
{
	const char *addr = NULL, *port = NULL;
	int cpu = 1, opt, rcvbuf = RCVBUF;

	while ((opt = getopt(argc, argv, "a:p:c:")) != -1) {
		switch (opt) {
		case 'a': addr = optarg; break;
		case 'p': port = optarg; break;
		case 'c': cpu = atoi(optarg); break;
		default: usage("udpsink -a ADDR -p PORT [-c CPU]");
		}
	}
	if (!addr || !port)
		usage("udpsink -a ADDR -p PORT [-c CPU]");
	pin(cpu);
	stop_on_signals();

	struct sockaddr_in sin = address(addr, port);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)))
		die("SO_RCVBUF");
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)))
		die("bind");

	static char bufs[BATCH][2048];
	static struct iovec iov[BATCH];
	static struct mmsghdr msgs[BATCH];
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = sizeof(bufs[i]);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	ready();

	unsigned long long received = 0;
	while (!stop) {
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n > 0)
			received += n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			die("recvmmsg");
	}
	printf("{\"received\": %llu, \"cpu\": %d}\n", received, cpu);
	return 0;
}
