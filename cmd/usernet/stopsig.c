// SIGINT and SIGTERM end the slirp4netns command line's process cleanly.
// os/signal would keep three threads of an idle instance for that (its
// goroutine blocked in the runtime, the runtime's thread locked to its
// signal mask, and the template thread that locking starts), and the
// runtime unblocks the two signals in every thread it makes, so a
// signalfd cannot have them. Instead this handler, installed after the
// runtime's (with SA_ONSTACK, as the runtime requires of handlers installed
// by C code), writes to an eventfd that stopsig.go waits for in the poller.
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static volatile int stop_fd = -1;

static void on_stop(int sig) {
	(void)sig;
	int saved = errno;
	uint64_t one = 1;
	(void)!write(stop_fd, &one, sizeof one);
	errno = saved;
}

static int set_stop_handler(void (*h)(int)) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = h;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
		return errno;
	return 0;
}

// usernet_catch_stop makes SIGINT and SIGTERM write 1 to the eventfd fd,
// which must stay open from then on. It returns 0 or an errno.
int usernet_catch_stop(int fd) {
	stop_fd = fd;
	return set_stop_handler(on_stop);
}

// usernet_release_stop gives SIGINT and SIGTERM their default action.
void usernet_release_stop(void) { set_stop_handler(SIG_DFL); }
