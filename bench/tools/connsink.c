/* connsink: accepts TCP connections and closes each at once, on one CPU.
 *
 *   connsink -a ADDR -p PORT [-c CPU]
 *
 * Listens on ADDR:PORT (backlog 4096), prints "ready", accepts until SIGTERM
 * or SIGINT and prints one JSON line: connections accepted. */
#include "common.h"

#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *addr = NULL, *port = NULL;
	int cpu = 1, opt, one = 1;

	while ((opt = getopt(argc, argv, "a:p:c:")) != -1) {
		switch (opt) {
		case 'a': addr = optarg; break;
		case 'p': port = optarg; break;
		case 'c': cpu = atoi(optarg); break;
		default: usage("connsink -a ADDR -p PORT [-c CPU]");
		}
	}
	if (!addr || !port)
		usage("connsink -a ADDR -p PORT [-c CPU]");
	pin(cpu);
	stop_on_signals();

	struct sockaddr_in sin = address(addr, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		die("socket");
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, 4096))
		die("bind/listen");
	ready();

	unsigned long long accepted = 0;
	while (!stop) {
		int c = accept4(fd, NULL, NULL, 0);
		if (c >= 0) {
			accepted++;
			close(c);
		} else if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
			die("accept4");
		} /* EINTR (told to stop), or a connection reset before it was accepted */
	}
	printf("{\"accepted\": %llu, \"cpu\": %d}\n", accepted, cpu);
	return 0;
}
