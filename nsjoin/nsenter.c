// The namespace join must happen before the Go runtime starts its threads:
// setns(CLONE_NEWUSER) is refused to a multithreaded process. This
// constructor runs in every usernet process before main, and does nothing
// unless the process is the socket broker (broker.go), in which case it
// joins the user and network namespaces whose fds it was handed, says how
// that went on its socket, and serves there without ever returning to Go.
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int usernet_nsjoin_step; // 0: ok; 1: userns failed; 2: netns failed
static int usernet_nsjoin_errno;

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

// A broker request (broker.go, brokerRequest): make a socket in this
// network namespace, or several (op 3), and send them back.
#define BROKER_MAX_FDS 32

struct broker_req {
	uint8_t op;     // 1: connect, 2: bind and listen (TCP) or bind (UDP), 3: fresh sockets
	uint8_t family; // AF_INET or AF_INET6
	uint8_t type;   // SOCK_STREAM or SOCK_DGRAM
	uint8_t pad;
	uint16_t port;  // host byte order; op 3: how many sockets
	uint16_t pad2;
	uint8_t addr[16];
};

static int broker_socket(const struct broker_req *r) {
	int fd = socket(r->family, r->type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_storage ss;
	socklen_t len;
	memset(&ss, 0, sizeof ss);
	if (r->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(r->port);
		memcpy(&sin->sin_addr, r->addr, 4);
		len = sizeof *sin;
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(r->port);
		memcpy(&sin6->sin6_addr, r->addr, 16);
		len = sizeof *sin6;
		int one = 1;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	}
	int err = 0;
	if (r->op == 1) {
		// Non-blocking: the caller waits for the handshake, so that
		// one slow connect never holds up the next request.
		if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS)
			err = errno;
	} else if (r->op == 2) {
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&ss, len) < 0)
			err = errno;
		else if (r->type == SOCK_STREAM && listen(fd, SOMAXCONN) < 0)
			err = errno;
	} else {
		err = EINVAL;
	}
	if (err != 0) {
		close(fd);
		return -err;
	}
	return fd;
}

// broker_fresh makes up to r->port unconnected sockets of r's family and
// type in fds (op 3: the pool behind Broker.DialTCP, which connects them
// itself: a socket stays in the namespace it was made in). It returns how
// many, or -errno when not even one could be made.
static int broker_fresh(const struct broker_req *r, int *fds) {
	int n = r->port;
	if (n < 1 || n > BROKER_MAX_FDS)
		return -EINVAL;
	for (int i = 0; i < n; i++) {
		int fd = socket(r->family, r->type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return i > 0 ? i : -errno;
		if (r->family == AF_INET6) {
			int one = 1;
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
		}
		fds[i] = fd;
	}
	return n;
}

// broker serves requests on fd until its peer closes it; it never returns
// to Go. It makes sockets inside the namespace for the process outside
// (pasta's local path: a connection from the host's loopback is made
// again from inside the namespace). It ends when the socket does, which
// is also when its parent dies: not PR_SET_PDEATHSIG, which fires when
// the parent *thread* ends, as all but one do when the parent execs into
// its sandbox.
static void broker(int fd) {
	for (;;) {
		struct broker_req r;
		ssize_t n = recv(fd, &r, sizeof r, 0);
		if (n == 0)
			_exit(0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		int32_t reply = 0;
		int fds[BROKER_MAX_FDS];
		int nfds = 0;
		if (n != sizeof r)
			reply = EINVAL;
		else if (r.op == 3) {
			int got = broker_fresh(&r, fds);
			if (got < 0)
				reply = -got;
			else
				nfds = got;
		} else {
			int sfd = broker_socket(&r);
			if (sfd < 0)
				reply = -sfd;
			else
				fds[nfds++] = sfd;
		}
		struct iovec iov = {.iov_base = &reply, .iov_len = sizeof reply};
		union {
			char buf[CMSG_SPACE(sizeof(int) * BROKER_MAX_FDS)];
			struct cmsghdr align;
		} u;
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		if (nfds > 0) {
			m.msg_control = u.buf;
			m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *c = CMSG_FIRSTHDR(&m);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
		if (sendmsg(fd, &m, MSG_NOSIGNAL) < 0)
			_exit(1);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
	}
}

__attribute__((constructor)) static void usernet_nsjoin(void) {
	const char *v = getenv("_USERNET_NSJOIN");
	if (v == NULL || strcmp(v, "broker") != 0)
		return;
	int userfd = fd_from_env("_USERNET_NSJOIN_USERFD");
	int netfd = fd_from_env("_USERNET_NSJOIN_NETFD");
	if (userfd >= 0) {
		if (setns(userfd, CLONE_NEWUSER) < 0) {
			usernet_nsjoin_step = 1;
			usernet_nsjoin_errno = errno;
		} else
			close(userfd);
	}
	if (usernet_nsjoin_step == 0 && netfd >= 0) {
		if (setns(netfd, CLONE_NEWNET) < 0) {
			usernet_nsjoin_step = 2;
			usernet_nsjoin_errno = errno;
		} else
			close(netfd);
	}
	// The broker never runs Go: it says how the join went (step, errno),
	// then serves or exits.
	int32_t hello[2] = {usernet_nsjoin_step, usernet_nsjoin_errno};
	if (send(3, hello, sizeof hello, MSG_NOSIGNAL) < 0 || usernet_nsjoin_step != 0)
		_exit(1);
	broker(3);
}
