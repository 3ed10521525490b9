// The sandbox is entered before the Go runtime starts: unshare(CLONE_NEWUSER)
// is refused to a multithreaded process, and capabilities, no_new_privs and
// a seccomp filter installed now are inherited by every thread the runtime
// creates later. This constructor runs in every usernet process before main
// and does nothing unless the process is a re-execution made by Exec
// (sandbox.go), which says what to do in environment variables:
//
//	_USERNET_SANDBOX=1          this is such a re-execution
//	_USERNET_SANDBOX_FS=1       --enable-sandbox: mount namespace, new root, capabilities
//	_USERNET_SANDBOX_BPF=HEX    --enable-seccomp: the filter, struct sock_filter[] in hex
//	_USERNET_SANDBOX_BINDS=...  more host directories to show at their own path, one a
//	                            line, "ro /path" or "rw /path" (with _FS only)
//	_USERNET_SANDBOX_COMM=NAME  the process name before the re-execution (else "exe")
//	_USERNET_SANDBOX_READ=...   set (even empty): nothing may be written, created or
//	                            removed, and files may be read only from these
//	                            directories (and below), one a line, enforced with
//	                            Landlock (Config.ConfineFS)
//	_USERNET_SANDBOX_RUNAS=U:G  become user U, group G, no supplementary groups (Config.RunAs)
//
// Errors are recorded, not printed: the Go side reports them (Resume) and
// exits before it serves anything. docs/sandbox.md explains the design.
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

const char *usernet_sandbox_failed; // the step that failed; NULL: none (or not a re-execution)
int usernet_sandbox_errno;          // its errno

// The new root is a tmpfs mounted here, in the new mount namespace only.
#define NEWROOT "/tmp"

static int fail(const char *step) {
	usernet_sandbox_failed = step;
	usernet_sandbox_errno = errno;
	return -1;
}

static int env_is(const char *name, const char *want) {
	const char *v = getenv(name);
	return v != NULL && strcmp(v, want) == 0;
}

static int write_file(const char *path, const char *data) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t n = strlen(data);
	ssize_t w = write(fd, data, n);
	int err = errno;
	close(fd);
	if (w != (ssize_t)n) {
		errno = w < 0 ? err : EIO;
		return -1;
	}
	return 0;
}

static int get_caps(struct __user_cap_data_struct data[2]) {
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	memset(data, 0, 2 * sizeof(data[0]));
	return syscall(SYS_capget, &hdr, data);
}

// A user namespace is needed when we cannot make a mount namespace in our
// own: an unprivileged user. Root (of the init namespace, or of podman's
// user namespace) has CAP_SYS_ADMIN and stays where it is.
static int need_userns(void) {
	struct __user_cap_data_struct data[2];
	if (get_caps(data) < 0)
		return 1;
	return (data[CAP_SYS_ADMIN / 32].effective & (1u << (CAP_SYS_ADMIN % 32))) == 0;
}

static int enter_namespaces(void) {
	if (!need_userns()) {
		if (unshare(CLONE_NEWNS) < 0)
			return fail("unshare(CLONE_NEWNS)");
		return 0;
	}
	uid_t uid = geteuid();
	gid_t gid = getegid();
	if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
		return fail("unshare(CLONE_NEWUSER|CLONE_NEWNS)");
	// Our ids map to themselves, so files and sockets keep their owner.
	char map[64];
	if (write_file("/proc/self/setgroups", "deny") < 0)
		return fail("write /proc/self/setgroups");
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
	if (write_file("/proc/self/uid_map", map) < 0)
		return fail("write /proc/self/uid_map");
	snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
	if (write_file("/proc/self/gid_map", map) < 0)
		return fail("write /proc/self/gid_map");
	return 0;
}

// The flags of the mount at path that a remount must keep (in a user
// namespace, flags locked by the parent namespace cannot be cleared).
static unsigned long kept_flags(const char *path) {
	struct statvfs st;
	unsigned long f = 0;
	if (statvfs(path, &st) < 0)
		return 0;
	if (st.f_flag & ST_RDONLY)
		f |= MS_RDONLY; // a read-only host mount stays so, also for "rw" binds
	if (st.f_flag & ST_NOATIME)
		f |= MS_NOATIME;
	if (st.f_flag & ST_NODIRATIME)
		f |= MS_NODIRATIME;
	if (st.f_flag & ST_RELATIME)
		f |= MS_RELATIME;
	if ((st.f_flag & (ST_NOATIME | ST_RELATIME)) == 0)
		f |= MS_STRICTATIME; // else the remount would default to relatime
	return f;
}

// mkdir_p creates the missing directories of path, as mkdir -p does.
static int mkdir_p(char *path) {
	struct stat st;
	for (char *p = path + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		int r = stat(path, &st) < 0 && errno == ENOENT ? mkdir(path, 0755) : 0;
		*p = c;
		if (r < 0)
			return -1;
		if (c == '\0')
			return 0;
	}
}

// bind_dir makes the host's src visible at dst (NEWROOT/src), with the mounts
// below it (MS_REC: the API socket's directory or a netns file may be one,
// and in a user namespace those locked mounts can only be bound together),
// read-only unless writable, and nosuid, nodev, noexec. src is an O_PATH fd
// opened before the new root's tmpfs hid anything under /tmp; -1 (a missing
// directory) is skipped. bind_dir closes it.
static int bind_dir(int srcfd, char *dst, int writable, const char *step_bind, const char *step_flags) {
	if (srcfd < 0)
		return 0;
	if (mkdir_p(dst) < 0)
		return fail("mkdir in the new root");
	char src[64];
	snprintf(src, sizeof(src), "/proc/self/fd/%d", srcfd);
	int r = mount(src, dst, NULL, MS_BIND | MS_REC, NULL);
	close(srcfd);
	if (r < 0)
		return fail(step_bind);
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC | (writable ? 0 : MS_RDONLY);
	if (mount(NULL, dst, NULL, flags | kept_flags(dst), NULL) < 0)
		return fail(step_flags);
	return 0;
}

static int under(const char *path, const char *dir) {
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

// The directories of _USERNET_SANDBOX_BINDS, shown at their own path: the
// directory of a path target's netns file (read-only, for the target watch)
// and that of the API socket (writable, to remove it). Their fds are opened
// before the new root's tmpfs is mounted on /tmp, which would hide those
// under /tmp.
#define MAXBINDS 8
static struct {
	int fd; // O_PATH, or -1: missing
	int writable;
	char dst[4096];
} binds[MAXBINDS];
static int nbinds;

static int open_dir(const char *path) {
	int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return -1;
	if (fd < 0)
		return -2;
	return fd;
}

static int open_binds(void) {
	const char *v = getenv("_USERNET_SANDBOX_BINDS");
	if (v == NULL)
		return 0;
	char *list = strdup(v);
	if (list == NULL)
		return fail("read _USERNET_SANDBOX_BINDS");
	int r = 0;
	for (char *save = NULL, *line = strtok_r(list, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		int writable = strncmp(line, "rw /", 4) == 0;
		const char *src = line + 3;
		if ((!writable && strncmp(line, "ro /", 4) != 0) || nbinds == MAXBINDS) {
			errno = EINVAL;
			r = fail("read _USERNET_SANDBOX_BINDS");
			break;
		}
		if (!writable && (under(src, "/etc") || under(src, "/run")))
			continue; // already there, read-only
		if (snprintf(binds[nbinds].dst, sizeof(binds[nbinds].dst), "%s%s", NEWROOT, src) >= (int)sizeof(binds[nbinds].dst)) {
			errno = ENAMETOOLONG;
			r = fail("bind a directory into the new root");
			break;
		}
		if ((binds[nbinds].fd = open_dir(src)) == -2) {
			r = fail("open a directory to bind into the new root");
			break;
		}
		binds[nbinds++].writable = writable;
	}
	free(list);
	return r;
}

static int extra_binds(void) {
	for (int i = 0; i < nbinds; i++) {
		if (bind_dir(binds[i].fd, binds[i].dst, binds[i].writable, "bind a directory into the new root",
		             "set the flags of a directory bound into the new root") < 0)
			return -1;
	}
	return 0;
}

static int make_root(void) {
	// First of all: nothing done below may propagate to the caller's
	// mount namespace (unmounting the old root would otherwise unmount
	// shared mounts, /run/netns say, for the caller too). Slave, not
	// private: mounts the caller makes later still show up in our /run.
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		return fail("make / rslave");
	int etcfd = open_dir("/etc"), runfd = open_dir("/run");
	if (etcfd == -2 || runfd == -2)
		return fail("open /etc or /run");
	if (open_binds() < 0)
		return -1;
	if (mount("tmpfs", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,nr_inodes=1024,mode=0755") < 0)
		return fail("mount tmpfs on " NEWROOT);
	// /etc: resolv.conf and hosts, for parity with slirp4netns (usernet
	// itself reads its DNS upstream before the sandbox). /run: the API
	// socket's directory and the netns files of podman and rootlesskit.
	char etc[] = NEWROOT "/etc", run[] = NEWROOT "/run";
	if (bind_dir(etcfd, etc, 0, "bind /etc", "remount /etc read-only") < 0)
		return -1;
	if (bind_dir(runfd, run, 0, "bind /run", "remount /run read-only") < 0)
		return -1;
	if (extra_binds() < 0)
		return -1;
	if (chdir(NEWROOT) < 0)
		return fail("chdir to the new root");
	// pivot_root(".", ".") stacks the old root on top of the new one;
	// unmounting "." then leaves only the new root.
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		return fail("pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		return fail("unmount the old root");
	if (chdir("/") < 0)
		return fail("chdir /");
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return fail("remount the new root read-only");
	return 0;
}

// switch_user becomes the user and group of _USERNET_SANDBOX_RUNAS, if
// set, without supplementary groups (pasta's --runas). With keep, the
// permitted capabilities survive for drop_caps, which keeps
// CAP_NET_BIND_SERVICE of them: the host ports are bound afterwards.
static int switch_user(int keep) {
	const char *v = getenv("_USERNET_SANDBOX_RUNAS");
	if (v == NULL || *v == '\0')
		return 0;
	unsigned int uid, gid;
	char end;
	if (sscanf(v, "%u:%u%c", &uid, &gid, &end) != 2) {
		errno = EINVAL;
		return fail("parse _USERNET_SANDBOX_RUNAS");
	}
	if (keep && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		return fail("keep capabilities across setuid");
	// Without CAP_SETGID there is nothing to drop, and it fails.
	if (setgroups(0, NULL) < 0 && errno != EPERM)
		return fail("drop supplementary groups");
	if (setgid(gid) < 0)
		return fail("setgid (--runas)");
	if (setuid(uid) < 0)
		return fail("setuid (--runas)");
	if (keep && prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		return fail("reset keep-capabilities");
	return 0;
}

// drop_caps keeps CAP_NET_BIND_SERVICE (if we have it) and nothing else, in
// every set including the bounding set, as slirp4netns does; in between it
// switches user (switch_user).
static int drop_caps(void) {
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return fail("clear ambient capabilities");
	for (int cap = 0;; cap++) {
		if (cap == CAP_NET_BIND_SERVICE)
			continue;
		int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
		if (r < 0) {
			if (errno == EINVAL)
				break; // past the last capability of this kernel
			return fail("read the capability bounding set");
		}
		if (r == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
			return fail("drop from the capability bounding set");
	}
	// Now that CAP_SETPCAP has done its work, and before the sets lose
	// CAP_SETUID and CAP_SETGID.
	if (switch_user(1) < 0)
		return -1;
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	if (get_caps(data) < 0)
		return fail("capget");
	__u32 keep = data[0].permitted & (1u << CAP_NET_BIND_SERVICE);
	memset(data, 0, sizeof(data));
	data[0].effective = data[0].permitted = data[0].inheritable = keep;
	if (syscall(SYS_capset, &hdr, data) < 0)
		return fail("capset");
	return 0;
}

static int hexval(char c) {
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int install_seccomp(const char *hex) {
	size_t n = strlen(hex);
	if (n == 0 || n % (2 * sizeof(struct sock_filter)) != 0 || n / 2 / sizeof(struct sock_filter) > BPF_MAXINSNS) {
		errno = EINVAL;
		return fail("decode the seccomp filter");
	}
	unsigned char *buf = malloc(n / 2);
	if (buf == NULL)
		return fail("decode the seccomp filter");
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(buf);
			errno = EINVAL;
			return fail("decode the seccomp filter");
		}
		buf[i] = (unsigned char)(hi << 4 | lo);
	}
	struct sock_fprog prog = {
		.len = (unsigned short)(n / 2 / sizeof(struct sock_filter)),
		.filter = (struct sock_filter *)buf,
	};
	int r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
	int err = errno;
	free(buf);
	if (r < 0) {
		errno = err;
		return fail("install the seccomp filter");
	}
	return 0;
}

// Landlock rights and fields newer than the oldest headers we build with;
// which of them the kernel knows is asked at run time (its ABI version).
#define UN_LL_FS_REFER (1ULL << 13)     // ABI 2
#define UN_LL_FS_TRUNCATE (1ULL << 14)  // ABI 3
#define UN_LL_FS_IOCTL_DEV (1ULL << 15) // ABI 5
#define UN_LL_SCOPE_ABSTRACT_UNIX (1ULL << 0) // ABI 6
#define UN_LL_SCOPE_SIGNAL (1ULL << 1)        // ABI 6

// struct landlock_ruleset_attr as of ABI 6; the size passed tells the
// kernel which fields we fill.
struct un_ruleset_attr {
	__u64 handled_access_fs;
	__u64 handled_access_net;
	__u64 scoped;
};

// confine_fs makes the file system read-only and mostly unreadable to the
// process: a Landlock ruleset that handles every file-system right the
// kernel knows (ABI 1: execute, write, read, list, remove and make every
// kind of file; 2: link or rename across directories; 3: truncate; 5:
// ioctl on devices) and allows only reading files and listing directories,
// beneath the directories of lines (absolute paths, one a line; a missing
// one is skipped). Files opened before it (the tap, --pcap, a log file)
// keep what they were opened for. With ABI 6 it also scopes abstract unix
// sockets and signals to the process itself. It needs no_new_privs.
static int confine_fs(const char *lines) {
	int abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
	if (abi < 1) {
		if (abi >= 0)
			errno = EOPNOTSUPP;
		return fail("ask the landlock ABI version");
	}
	const __u64 read = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
	struct un_ruleset_attr attr = {
		.handled_access_fs = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | read |
		                     LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |
		                     LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR |
		                     LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |
		                     LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |
		                     LANDLOCK_ACCESS_FS_MAKE_SYM,
	};
	size_t size = sizeof(attr.handled_access_fs);
	if (abi >= 2)
		attr.handled_access_fs |= UN_LL_FS_REFER;
	if (abi >= 3)
		attr.handled_access_fs |= UN_LL_FS_TRUNCATE;
	if (abi >= 5)
		attr.handled_access_fs |= UN_LL_FS_IOCTL_DEV;
	if (abi >= 6) {
		attr.scoped = UN_LL_SCOPE_ABSTRACT_UNIX | UN_LL_SCOPE_SIGNAL;
		size = sizeof(attr);
	}
	int rfd = syscall(SYS_landlock_create_ruleset, &attr, size, 0);
	if (rfd < 0)
		return fail("create the landlock ruleset");
	char *copy = strdup(lines), *save = NULL;
	if (copy == NULL) {
		close(rfd);
		return fail("create the landlock ruleset");
	}
	for (char *path = strtok_r(copy, "\n", &save); path != NULL; path = strtok_r(NULL, "\n", &save)) {
		int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct landlock_path_beneath_attr rule = {.allowed_access = read, .parent_fd = fd};
		int r = syscall(SYS_landlock_add_rule, rfd, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
		int e = errno;
		close(fd);
		if (r < 0) {
			free(copy);
			close(rfd);
			errno = e;
			return fail("add a landlock rule");
		}
	}
	free(copy);
	int r = syscall(SYS_landlock_restrict_self, rfd, 0);
	int e = errno;
	close(rfd);
	if (r < 0) {
		errno = e;
		return fail("enforce the landlock ruleset");
	}
	return 0;
}

__attribute__((constructor)) static void usernet_sandbox(void) {
	if (!env_is("_USERNET_SANDBOX", "1"))
		return;
	const char *comm = getenv("_USERNET_SANDBOX_COMM");
	if (comm != NULL && *comm != '\0')
		prctl(PR_SET_NAME, comm, 0, 0, 0); // best effort: only for ps and pgrep
	if (env_is("_USERNET_SANDBOX_FS", "1")) {
		if (enter_namespaces() < 0 || make_root() < 0 || drop_caps() < 0)
			return;
	} else if (switch_user(0) < 0) {
		return;
	}
	// Set for --enable-sandbox, and needed by seccomp without
	// CAP_SYS_ADMIN (slirp4netns sets it in both cases too).
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		fail("set no_new_privs");
		return;
	}
	// Before the filter, which refuses the landlock syscalls.
	const char *reads = getenv("_USERNET_SANDBOX_READ");
	if (reads != NULL && confine_fs(reads) < 0)
		return;
	const char *bpf = getenv("_USERNET_SANDBOX_BPF");
	if (bpf != NULL && *bpf != '\0')
		install_seccomp(bpf);
}
