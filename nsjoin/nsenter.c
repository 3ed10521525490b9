// The namespace join must happen before the Go runtime starts its threads:
// setns(CLONE_NEWUSER) is refused to a multithreaded process. This
// constructor runs in every usernet process before main, and does nothing
// unless the process is an nsjoin child (see nsjoin.go), in which case it
// joins the user and network namespaces whose fds it was handed. Errors are
// recorded, not printed, so that the Go side reports them to the parent.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

int usernet_nsjoin_step;  // 0: ok or not a child; 1: userns failed; 2: netns failed
int usernet_nsjoin_errno;

static int fd_from_env(const char *name) {
	const char *v = getenv(name);
	if (v == NULL || *v == '\0')
		return -1;
	char *end;
	long fd = strtol(v, &end, 10);
	if (*end != '\0' || fd < 0 || fd > 1 << 20)
		return -1;
	return (int)fd;
}

__attribute__((constructor)) static void usernet_nsjoin(void) {
	const char *v = getenv("_USERNET_NSJOIN");
	if (v == NULL || v[0] != '1' || v[1] != '\0')
		return;
	int userfd = fd_from_env("_USERNET_NSJOIN_USERFD");
	int netfd = fd_from_env("_USERNET_NSJOIN_NETFD");
	if (userfd >= 0) {
		if (setns(userfd, CLONE_NEWUSER) < 0) {
			usernet_nsjoin_step = 1;
			usernet_nsjoin_errno = errno;
			return;
		}
		close(userfd);
	}
	if (netfd >= 0) {
		if (setns(netfd, CLONE_NEWNET) < 0) {
			usernet_nsjoin_step = 2;
			usernet_nsjoin_errno = errno;
			return;
		}
		close(netfd);
	}
}
