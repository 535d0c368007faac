/* connrate: new TCP connections for a fixed time, each a new flow.
 *
 *   connrate -d ADDR -p PORT [-t SECONDS] [-c CPU] [-n INFLIGHT]
 *
 * Keeps INFLIGHT non-blocking connects under way at once (epoll), pinned to
 * CPU. A connection counts when its handshake completes; it is then closed
 * with a reset (SO_LINGER 0: no TIME_WAIT, so ephemeral ports come back) and
 * a new socket, from a new source port, takes its place: every connection is
 * one new translation for any NAT on the path. A connect that fails, or has
 * not completed within 1 s (a lost SYN), is a failure. Prints one JSON line:
 * connections, failures, seconds, CPU time (see cpu_ns in common.h). */
#include "common.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_INFLIGHT 1024
#define TIMEOUT_S 1.0

struct slot {
	int fd;
	double started;
};

static struct slot slots[MAX_INFLIGHT];

/* A connect under way in slot idx; -1 when it failed at once (the slot stays empty). */
static int start(int ep, const struct sockaddr_in *sin, unsigned int idx)
{
	struct linger reset = {.l_onoff = 1, .l_linger = 0};
	struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = idx};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)))
		die("socket");
	if (connect(fd, (const struct sockaddr *)sin, sizeof(*sin)) && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll_ctl");
	slots[idx].fd = fd;
	slots[idx].started = now();
	return 0;
}

static void finish(unsigned int idx)
{
	close(slots[idx].fd);
	slots[idx].fd = -1;
}

int main(int argc, char **argv)
{
	const char *dst = NULL, *port = NULL;
	double seconds = 1;
	int cpu = 0, inflight = 32, opt;

	while ((opt = getopt(argc, argv, "d:p:t:c:n:")) != -1) {
		switch (opt) {
		case 'd': dst = optarg; break;
		case 'p': port = optarg; break;
		case 't': seconds = atof(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		case 'n': inflight = atoi(optarg); break;
		default: usage("connrate -d ADDR -p PORT [-t SECONDS] [-c CPU] [-n INFLIGHT]");
		}
	}
	if (!dst || !port || seconds <= 0 || inflight < 1 || inflight > MAX_INFLIGHT)
		usage("connrate -d ADDR -p PORT [-t SECONDS>0] [-c CPU] [-n 1..1024]");
	pin(cpu);
	stop_on_signals();

	struct sockaddr_in sin = address(dst, port);
	struct epoll_event events[MAX_INFLIGHT];
	int ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	for (int i = 0; i < inflight; i++)
		slots[i].fd = -1;

	unsigned long long connections = 0, failures = 0, cpu_start = cpu_ns();
	double start_t = now(), end = start_t + seconds, t = start_t;
	while (!stop && t < end) {
		for (int i = 0; i < inflight; i++) {
			if (slots[i].fd >= 0 && t - slots[i].started > TIMEOUT_S) {
				finish(i);
				failures++;
			}
			if (slots[i].fd < 0 && start(ep, &sin, i))
				failures++;
		}
		int n = epoll_wait(ep, events, inflight, 1);
		for (int e = 0; e < n; e++) {
			unsigned int idx = events[e].data.u32;
			int err = 0;
			socklen_t len = sizeof(err);

			if (getsockopt(slots[idx].fd, SOL_SOCKET, SO_ERROR, &err, &len) || err)
				failures++;
			else
				connections++;
			finish(idx);
		}
		t = now();
	}
	printf("{\"connections\": %llu, \"failures\": %llu, \"seconds\": %.6f, \"cpu_ns\": %llu, \"cpu\": %d}\n",
	       connections, failures, t - start_t, cpu_ns() - cpu_start, cpu);
	return 0;
}
