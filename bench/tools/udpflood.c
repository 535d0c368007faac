/* udpflood: small UDP datagrams at full speed from one CPU, for a fixed time.
 *
 *   udpflood -d ADDR -p PORT [-s SIZE] [-t SECONDS] [-c CPU] [-b BATCH] [-n FLOWS]
 *
 * One connected socket, sendmmsg batches of BATCH datagrams of SIZE bytes,
 * pinned to CPU, for SECONDS (fractions allowed). With -n, FLOWS datagrams
 * and then stop (or at SECONDS): one unconnected socket sends datagram i to
 * PORT + i, so every datagram is a new flow, a new translation for any NAT
 * on the path. Prints one JSON line:
 * datagrams sent, failed send calls (an error ends no run: a full queue or a
 * late ICMP error is counted and sending goes on), the seconds it sent for
 * and its CPU time (see cpu_ns in common.h). */
#include "common.h"

#include <sys/socket.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define USAGE "udpflood -d ADDR -p 1..65535 [-s 1..1472] [-t SECONDS>0] [-c CPU] [-b 1..1024] [-n FLOWS, PORT+FLOWS<=65536]"

int main(int argc, char **argv)
{
	const char *dst = NULL, *port = NULL;
	double seconds = 1;
	int size = 64, cpu = 0, batch = 64, opt;
	long flows = 0;
	char *rest;

	while ((opt = getopt(argc, argv, "d:p:s:t:c:b:n:")) != -1) {
		switch (opt) {
		case 'd': dst = optarg; break;
		case 'p': port = optarg; break;
		case 's': size = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'n': flows = strtol(optarg, &rest, 10); if (*rest || rest == optarg) usage(USAGE); break;
		default: usage(USAGE);
		}
	}
	if (!dst || !port || size < 1 || size > 1472 || batch < 1 || batch > MAX_BATCH || seconds <= 0 ||
	    atoi(port) < 1 || atoi(port) > 65535 || flows < 0 || flows > 65536 - atoi(port))
		usage(USAGE);
	pin(cpu);
	stop_on_signals();

	struct sockaddr_in sin = address(dst, port);
	static struct sockaddr_in names[MAX_BATCH];   /* -n: each datagram's own destination */
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || (!flows && connect(fd, (struct sockaddr *)&sin, sizeof(sin))))
		die("socket/connect");

	static char payload[1472];
	static struct iovec iov;
	static struct mmsghdr msgs[MAX_BATCH];
	iov.iov_base = payload;
	iov.iov_len = size;
	for (int i = 0; i < batch; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
		if (flows) {
			names[i] = sin;
			msgs[i].msg_hdr.msg_name = &names[i];
			msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
		}
	}

	unsigned long long sent = 0, errors = 0, cpu_start = cpu_ns();
	double start = now(), end = start + seconds, t = start;
	while (!stop && t < end && (!flows || sent < (unsigned long long)flows)) {
		int want = batch;
		if (flows) {
			if ((long)(flows - sent) < want)
				want = (int)(flows - sent);
			for (int i = 0; i < want; i++)
				names[i].sin_port = htons((unsigned short)(ntohs(sin.sin_port) + sent + i));
		}
		int n = sendmmsg(fd, msgs, want, 0);
		if (n > 0)
			sent += n;
		else
			errors++;
		t = now();
	}
	printf("{\"sent\": %llu, \"errors\": %llu, \"seconds\": %.6f, \"cpu_ns\": %llu, \"cpu\": %d}\n",
	       sent, errors, t - start, cpu_ns() - cpu_start, cpu);
	return 0;
}
