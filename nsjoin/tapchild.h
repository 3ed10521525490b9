// The request OpenTap hands to its child (tapchild.c), in C memory: the
// child shares it, and writes its results into it.
#include <stdint.h>

#define USERNET_TAP_PROCNET 4 // /proc/net/{tcp,tcp6,udp,udp6}

// step: what failed (0: nothing).
enum {
	USERNET_TAP_USERNS = 1,
	USERNET_TAP_NETNS,
	USERNET_TAP_PROCNET_OPEN, // index: which file
	USERNET_TAP_OPEN,
	USERNET_TAP_TUNSETIFF,
	USERNET_TAP_OFFLOAD,
	USERNET_TAP_NETLINK,
	USERNET_TAP_IFINDEX,
	USERNET_TAP_MESSAGE, // index: which message
	USERNET_TAP_CLONE,
	USERNET_TAP_DIED, // err: the signal or exit status
};

// One netlink message in usernet_tap_req.msgs, followed by its bytes.
struct usernet_tap_msg {
	uint32_t len;      // the message's length
	uint32_t index_at; // where the tap's ifindex goes (a uint32); 0: nowhere
	uint32_t exist_ok; // EEXIST is success
};

struct usernet_tap_req {
	// in
	int userfd; // -1: join no user namespace
	int netfd;
	int procnet; // open the namespace's /proc/net files
	char name[16];
	int tunflags;
	int offloads; // -1: no TUNSETOFFLOAD
	unsigned char *msgs;
	int msgslen;
	// out
	int step, err, index;
	int tapfd;
	int procfds[USERNET_TAP_PROCNET];
};

int usernet_open_tap(struct usernet_tap_req *r);
