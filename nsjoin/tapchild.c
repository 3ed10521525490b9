// OpenTap's child: a clone of the calling thread that shares our memory and
// fd table but not our credentials or namespaces. It joins the target's user
// and network namespaces, opens what OpenTap asked for there, sends the
// netlink messages that configure the tap, writes the results into the
// request and exits. Nothing is executed: no second program start, no second
// Go runtime, no file descriptors to pass back.
//
// setns(CLONE_NEWUSER) needs a single-threaded process with its own fs
// struct, not its own memory, so CLONE_VM is allowed; CLONE_VFORK keeps the
// calling thread (the only one whose stack and TLS the child touches) asleep
// until the child has exited. The child calls only system calls, with every
// signal blocked: it must never run a Go signal handler on shared memory.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tapchild.h"

static const char *const procnet_paths[] = {
	"/proc/self/net/tcp", "/proc/self/net/tcp6", "/proc/self/net/udp", "/proc/self/net/udp6",
};

static int fail(struct usernet_tap_req *r, int step, int index, int err) {
	r->step = step;
	r->index = index;
	r->err = err;
	return 1;
}

// netlink sends one message and waits for its acknowledgement: 0 or an errno.
static int netlink(int fd, unsigned char *msg, uint32_t len, uint32_t seq) {
	struct nlmsghdr *h = (struct nlmsghdr *)msg;
	h->nlmsg_seq = seq;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	if (sendto(fd, msg, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
		return errno;
	for (;;) {
		union {
			unsigned char buf[8192];
			struct nlmsghdr align;
		} u;
		ssize_t n = recv(fd, u.buf, sizeof u.buf, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		for (struct nlmsghdr *a = &u.align; NLMSG_OK(a, (size_t)n); a = NLMSG_NEXT(a, n)) {
			if (a->nlmsg_seq != seq || a->nlmsg_type != NLMSG_ERROR)
				continue;
			if (a->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)))
				return EBADMSG;
			return -((struct nlmsgerr *)NLMSG_DATA(a))->error;
		}
	}
}

static int configure(struct usernet_tap_req *r) {
	if (r->msgslen == 0)
		return 0;
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return fail(r, USERNET_TAP_NETLINK, 0, errno);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, r->name, sizeof ifr.ifr_name);
	// Any socket answers SIOCGIFINDEX for its network namespace.
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		int err = errno;
		close(fd);
		return fail(r, USERNET_TAP_IFINDEX, 0, err);
	}
	uint32_t ifindex = (uint32_t)ifr.ifr_ifindex;
	// Records: struct usernet_tap_msg, then the message, padded to 4.
	unsigned char *p = r->msgs, *end = r->msgs + r->msgslen;
	for (int i = 0; p + sizeof(struct usernet_tap_msg) <= end; i++) {
		struct usernet_tap_msg m;
		memcpy(&m, p, sizeof m);
		unsigned char *msg = p + sizeof m;
		if (m.len < sizeof(struct nlmsghdr) || msg + m.len > end || m.index_at + 4 > m.len) {
			close(fd);
			return fail(r, USERNET_TAP_MESSAGE, i, EINVAL);
		}
		if (m.index_at > 0)
			memcpy(msg + m.index_at, &ifindex, sizeof ifindex);
		int err = netlink(fd, msg, m.len, (uint32_t)i + 1);
		if (err == EEXIST && m.exist_ok)
			err = 0;
		if (err != 0) {
			close(fd);
			return fail(r, USERNET_TAP_MESSAGE, i, err);
		}
		p = msg + ((m.len + 3) & ~3u);
	}
	close(fd);
	return 0;
}

static int tap_child(void *arg) {
	struct usernet_tap_req *r = arg;
	if (r->userfd >= 0 && setns(r->userfd, CLONE_NEWUSER) < 0)
		_exit(fail(r, USERNET_TAP_USERNS, 0, errno));
	if (setns(r->netfd, CLONE_NEWNET) < 0)
		_exit(fail(r, USERNET_TAP_NETNS, 0, errno));
	// The fd table is the caller's: whatever fails closes what was opened.
	int n = 0;
	if (r->procnet) {
		for (; n < USERNET_TAP_PROCNET; n++) {
			// /proc/self is this child, now in the target's namespace.
			r->procfds[n] = open(procnet_paths[n], O_RDONLY | O_CLOEXEC);
			if (r->procfds[n] < 0) {
				fail(r, USERNET_TAP_PROCNET_OPEN, n, errno);
				while (n-- > 0)
					close(r->procfds[n]);
				_exit(1);
			}
		}
	}
	int step = 0, err = 0;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		step = USERNET_TAP_OPEN;
		err = errno;
	} else {
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		memcpy(ifr.ifr_name, r->name, sizeof ifr.ifr_name);
		ifr.ifr_flags = (short)r->tunflags;
		if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
			step = USERNET_TAP_TUNSETIFF;
			err = errno;
		} else if (r->offloads >= 0 && ioctl(fd, TUNSETOFFLOAD, (unsigned long)r->offloads) < 0) {
			step = USERNET_TAP_OFFLOAD;
			err = errno;
		} else if (configure(r) != 0) {
			step = -1; // recorded
		}
	}
	if (step != 0) {
		if (fd >= 0)
			close(fd);
		while (n-- > 0)
			close(r->procfds[n]);
		if (step > 0)
			fail(r, step, 0, err);
		_exit(1);
	}
	r->tapfd = fd;
	_exit(0);
}

int usernet_open_tap(struct usernet_tap_req *r) {
	r->step = USERNET_TAP_CLONE;
	r->err = 0;
	r->index = 0;
	r->tapfd = -1;
	for (int i = 0; i < USERNET_TAP_PROCNET; i++)
		r->procfds[i] = -1;
	const size_t stack_size = 64 * 1024;
	void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED) {
		r->err = errno;
		return -1;
	}
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int saved = errno;
	r->step = 0;
	pid_t pid = clone(tap_child, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, r);
	int cerr = errno;
	errno = saved;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0) {
		munmap(stack, stack_size);
		r->step = USERNET_TAP_CLONE;
		r->err = cerr;
		return -1;
	}
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	munmap(stack, stack_size);
	if (r->step == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		r->step = USERNET_TAP_DIED;
		r->err = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
		// Killed half-way: close what it may have opened.
		if (r->tapfd >= 0)
			close(r->tapfd);
		r->tapfd = -1;
		for (int i = 0; i < USERNET_TAP_PROCNET; i++)
			if (r->procfds[i] >= 0)
				close(r->procfds[i]);
	}
	return r->step == 0 ? 0 : -1;
}
