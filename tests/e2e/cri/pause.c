/* The sandbox ("pause") process of the tests' local pause image: holds the
 * pod's namespaces, reaps what is reparented to it (it is PID 1 of the pod's
 * PID namespace), and exits 0 on SIGTERM or SIGINT. PID 1 of a namespace
 * ignores signals it has no handler for, hence the handlers.
 * Built static (cc -static -O2) so the image needs nothing but this file. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {0};
    struct sigaction child = {0};

    term.sa_handler = on_term;
    sigemptyset(&term.sa_mask);
    if (sigaction(SIGTERM, &term, NULL) < 0 || sigaction(SIGINT, &term, NULL) < 0)
        return 1;
    child.sa_handler = on_child;
    sigemptyset(&child.sa_mask);
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &child, NULL) < 0)
        return 1;
    for (;;)
        pause();
    return 42; /* not reached */
}
