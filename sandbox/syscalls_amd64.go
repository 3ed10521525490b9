package sandbox

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_X86_64

// rules is the allow-list for linux/amd64, in the order the filter checks
// it: the data path first (kernels before 5.11 have no seccomp cache and
// walk the list on every syscall). It is what the whole integration suite
// made usernet call once sandboxed, found by running it with every allowed
// syscall but the busiest logged (SECCOMP_RET_LOG) and a strace of a few
// runs, plus a handful kept for paths the suite cannot reach (marked);
// docs/sandbox.md says how to redo it for a new Go or gVisor.
//
// Not allowed, among others: execve and every way to make a process
// (fork, clone without CLONE_THREAD), openat to write or create (reading
// is allowed: the DNS forwarder follows resolv.conf), ioctl but SIOCOUTQ
// (a tty on stdin would allow TIOCSTI), unix/netlink/packet sockets, mount, unshare,
// setns, ptrace, bpf, io_uring, keyctl, signals to other processes.
var rules = []rule{
	// Data path: the tap (link/tap.go: readv, writev), host
	// sockets through the Go poller, the runtime's scheduler.
	{name: "read", nr: unix.SYS_READ},
	{name: "write", nr: unix.SYS_WRITE},
	{name: "readv", nr: unix.SYS_READV},
	{name: "writev", nr: unix.SYS_WRITEV},
	{name: "futex", nr: unix.SYS_FUTEX},
	{name: "epoll_pwait", nr: unix.SYS_EPOLL_PWAIT},
	{name: "ppoll", nr: unix.SYS_PPOLL},
	{name: "recvfrom", nr: unix.SYS_RECVFROM},
	{name: "sendto", nr: unix.SYS_SENDTO},
	{name: "recvmsg", nr: unix.SYS_RECVMSG},
	{name: "sendmsg", nr: unix.SYS_SENDMSG},
	{name: "recvmmsg", nr: unix.SYS_RECVMMSG}, // a UDP port's replies (stack/udprecv.go)
	{name: "nanosleep", nr: unix.SYS_NANOSLEEP},
	{name: "sched_yield", nr: unix.SYS_SCHED_YIELD},
	{name: "epoll_ctl", nr: unix.SYS_EPOLL_CTL},
	// SIOCOUTQ only: the direct TCP path's window is the room in the host
	// socket (stack/tcpdirect.go). The kernel takes the request as 32
	// bits; on a tty the same number (TIOCOUTQ) only reads a count.
	{name: "ioctl", nr: unix.SYS_IOCTL, kind: arg1In, vals: []uint32{unix.SIOCOUTQ}},

	// Host sockets for flows, DNS and ping sockets: IPv4 and IPv6 only.
	{name: "socket", nr: unix.SYS_SOCKET, kind: arg0In, vals: []uint32{unix.AF_INET, unix.AF_INET6}},
	{name: "connect", nr: unix.SYS_CONNECT},
	{name: "setsockopt", nr: unix.SYS_SETSOCKOPT},
	{name: "getsockopt", nr: unix.SYS_GETSOCKOPT},
	{name: "getsockname", nr: unix.SYS_GETSOCKNAME},
	{name: "getpeername", nr: unix.SYS_GETPEERNAME},
	{name: "shutdown", nr: unix.SYS_SHUTDOWN},
	// Not reached by the suite: bind for --outbound-addr and port
	// forwarding listeners, listen and accept4 for those and the API
	// socket (its listener is inherited, see cmd/usernet/sandbox.go).
	{name: "bind", nr: unix.SYS_BIND},
	{name: "listen", nr: unix.SYS_LISTEN},
	{name: "accept4", nr: unix.SYS_ACCEPT4},

	// Files. newfstatat: the path target's watch (a stat of the netns
	// file, whose directory the sandbox shows) and the DNS forwarder's
	// look at resolv.conf, which openat then reads when it changed
	// (read-only: the sandbox shows little, and none of it writable). No
	// unlinkat, renameat, mkdirat and the like: nothing is removed or
	// created once sandboxed (the API socket's file stays: its listener
	// is inherited, its directory is not shown).
	{name: "openat", nr: unix.SYS_OPENAT, kind: openReadOnly},
	{name: "close", nr: unix.SYS_CLOSE},
	{name: "pread64", nr: unix.SYS_PREAD64},                     // pasta's auto forwarding rereads /proc/net files it holds
	{name: "dup3", nr: unix.SYS_DUP3},                           // pasta's background process lets go of the caller's stdio
	{name: "inotify_init1", nr: unix.SYS_INOTIFY_INIT1},         // a path target's removal, seen at once
	{name: "inotify_add_watch", nr: unix.SYS_INOTIFY_ADD_WATCH}, // (nsjoin.Watch)
	{name: "fcntl", nr: unix.SYS_FCNTL},
	{name: "fstat", nr: unix.SYS_FSTAT},
	{name: "newfstatat", nr: unix.SYS_NEWFSTATAT},
	{name: "pipe2", nr: unix.SYS_PIPE2},
	{name: "eventfd2", nr: unix.SYS_EVENTFD2},
	{name: "epoll_create1", nr: unix.SYS_EPOLL_CREATE1},

	// Go runtime and glibc (cgo threads are made by pthread_create):
	// memory, threads, signals, time.
	{name: "mmap", nr: unix.SYS_MMAP},
	{name: "munmap", nr: unix.SYS_MUNMAP},
	{name: "madvise", nr: unix.SYS_MADVISE},
	{name: "mprotect", nr: unix.SYS_MPROTECT},
	{name: "brk", nr: unix.SYS_BRK}, // not reached: glibc malloc's main arena
	// Threads only. clone3 passes its flags in memory, where seccomp
	// cannot look: it gets ENOSYS, and glibc falls back to clone.
	{name: "clone", nr: unix.SYS_CLONE, kind: cloneThread},
	{name: "clone3", nr: unix.SYS_CLONE3, kind: errnoRet, errno: unix.ENOSYS},
	{name: "set_robust_list", nr: unix.SYS_SET_ROBUST_LIST},
	{name: "rseq", nr: unix.SYS_RSEQ},
	{name: "gettid", nr: unix.SYS_GETTID},
	{name: "getpid", nr: unix.SYS_GETPID},
	// Signals to this process only: preemption (tgkill), and the
	// runtime's death by signal (kill). Not other processes of the user.
	{name: "tgkill", nr: unix.SYS_TGKILL, kind: arg0In, self: true},
	{name: "kill", nr: unix.SYS_KILL, kind: arg0In, self: true},
	{name: "rt_sigaction", nr: unix.SYS_RT_SIGACTION},
	{name: "rt_sigprocmask", nr: unix.SYS_RT_SIGPROCMASK},
	{name: "rt_sigreturn", nr: unix.SYS_RT_SIGRETURN},
	{name: "sigaltstack", nr: unix.SYS_SIGALTSTACK},
	{name: "restart_syscall", nr: unix.SYS_RESTART_SYSCALL}, // a sleep or poll interrupted by a signal
	{name: "sched_getaffinity", nr: unix.SYS_SCHED_GETAFFINITY},
	{name: "clock_gettime", nr: unix.SYS_CLOCK_GETTIME}, // normally the vDSO; the fallback
	{name: "gettimeofday", nr: unix.SYS_GETTIMEOFDAY},   // likewise
	{name: "getrandom", nr: unix.SYS_GETRANDOM},
	{name: "prlimit64", nr: unix.SYS_PRLIMIT64, kind: arg0In, vals: []uint32{0}},       // own limits only (os raises RLIMIT_NOFILE)
	{name: "prctl", nr: unix.SYS_PRCTL, kind: arg0In, vals: []uint32{unix.PR_SET_VMA}}, // the runtime names its mappings
	{name: "exit", nr: unix.SYS_EXIT},
	{name: "exit_group", nr: unix.SYS_EXIT_GROUP},
}
