package sandbox

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData encodes a struct seccomp_data for x/net/bpf's VM. The kernel
// loads 32-bit words in the machine's byte order, the VM in network order:
// so each word is written big-endian at the offset where the kernel finds
// it (on little-endian machines the low word of an argument comes first).
func seccompData(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[offNr:], nr)
	binary.BigEndian.PutUint32(b[offArch:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[argLow(i):], uint32(a))
		binary.BigEndian.PutUint32(b[argLow(i)+4:], uint32(a>>32))
	}
	return b
}

// vm runs the filter as the kernel gets it: assembled, encoded, decoded.
func vm(t *testing.T, pid int, openRead bool) *bpf.VM {
	t.Helper()
	b, err := Filter(pid, openRead)
	if err != nil {
		t.Fatalf("Filter(%d): %v", pid, err)
	}
	if len(b)%8 != 0 || len(b)/8 > 4096 {
		t.Fatalf("Filter(%d): %d bytes; want whole instructions, at most 4096", pid, len(b))
	}
	raw := make([]bpf.RawInstruction, len(b)/8)
	for i := range raw {
		raw[i] = bpf.RawInstruction{
			Op: binary.NativeEndian.Uint16(b[8*i:]),
			Jt: b[8*i+2],
			Jf: b[8*i+3],
			K:  binary.NativeEndian.Uint32(b[8*i+4:]),
		}
	}
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("Filter(%d) does not disassemble", pid)
	}
	v, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("bpf.NewVM: %v", err)
	}
	return v
}

func actionName(a uint32) string {
	switch {
	case a == retAllow:
		return "allow"
	case a == retKillProcess:
		return "kill-process"
	case a&unix.SECCOMP_RET_ACTION_FULL == retErrno:
		return "errno " + unix.ErrnoName(unix.Errno(a&unix.SECCOMP_RET_DATA))
	}
	return fmt.Sprintf("%#x", a)
}

// atFDCWD is AT_FDCWD as the 64-bit register holds it.
const atFDCWD = uint64(1<<64 - 100)

func TestFilterDecisions(t *testing.T) {
	if !SeccompSupported() {
		t.Skip(ErrArch)
	}
	const pid = 4242
	v := vm(t, pid, true)
	const goThread = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_SYSVSEM | unix.CLONE_THREAD
	tests := []struct {
		name string
		arch uint32
		nr   uint32
		args []uint64
		want string
	}{
		{"read", auditArch, unix.SYS_READ, nil, "allow"},
		{"writev", auditArch, unix.SYS_WRITEV, nil, "allow"},
		{"exit_group", auditArch, unix.SYS_EXIT_GROUP, nil, "allow"},
		{"socket AF_INET", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP}, "allow"},
		{"socket AF_INET6", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_INET6, unix.SOCK_STREAM}, "allow"},
		{"socket AF_UNIX", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, "errno EPERM"},
		{"socket AF_NETLINK", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_NETLINK, unix.SOCK_RAW}, "errno EPERM"},
		{"socket AF_PACKET", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_PACKET, unix.SOCK_RAW}, "errno EPERM"},
		{"socket AF_INET in the high word only", auditArch, unix.SYS_SOCKET, []uint64{unix.AF_INET << 32}, "errno EPERM"},
		{"clone of a Go thread", auditArch, unix.SYS_CLONE, []uint64{goThread}, "allow"},
		{"clone of a glibc thread", auditArch, unix.SYS_CLONE, []uint64{goThread | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID}, "allow"},
		{"fork", auditArch, unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, "errno EPERM"},
		{"vfork as os/exec does", auditArch, unix.SYS_CLONE, []uint64{unix.CLONE_VM | unix.CLONE_VFORK | uint64(unix.SIGCHLD)}, "errno EPERM"},
		{"thread in a new user namespace", auditArch, unix.SYS_CLONE, []uint64{goThread | unix.CLONE_NEWUSER}, "errno EPERM"},
		{"thread in a new network namespace", auditArch, unix.SYS_CLONE, []uint64{goThread | unix.CLONE_NEWNET}, "errno EPERM"},
		{"clone3", auditArch, unix.SYS_CLONE3, nil, "errno ENOSYS"},
		{"fork(2)", auditArch, unix.SYS_FORK, nil, "errno EPERM"},
		{"vfork(2)", auditArch, unix.SYS_VFORK, nil, "errno EPERM"},
		{"execve", auditArch, unix.SYS_EXECVE, nil, "errno EPERM"},
		{"execveat", auditArch, unix.SYS_EXECVEAT, nil, "errno EPERM"},
		{"openat to read, as os.Open", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_RDONLY | unix.O_CLOEXEC}, "allow"},
		{"openat O_PATH", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_PATH | unix.O_CLOEXEC}, "allow"},
		{"openat O_WRONLY", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_WRONLY}, "errno EPERM"},
		{"openat O_RDWR", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_RDWR | unix.O_CLOEXEC}, "errno EPERM"},
		{"openat O_CREAT", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_RDONLY | unix.O_CREAT, 0o600}, "errno EPERM"},
		{"openat O_TRUNC", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_TRUNC}, "errno EPERM"},
		{"openat O_APPEND", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_APPEND}, "errno EPERM"},
		{"openat O_TMPFILE", auditArch, unix.SYS_OPENAT, []uint64{atFDCWD, 0, unix.O_TMPFILE | unix.O_RDWR}, "errno EPERM"},
		{"open", auditArch, unix.SYS_OPEN, nil, "errno EPERM"},
		{"openat2", auditArch, unix.SYS_OPENAT2, nil, "errno EPERM"},
		{"ioctl", auditArch, unix.SYS_IOCTL, []uint64{0, unix.TIOCSTI}, "errno EPERM"},
		{"ioctl SIOCOUTQ", auditArch, unix.SYS_IOCTL, []uint64{5, unix.SIOCOUTQ}, "allow"},
		{"ioctl, SIOCOUTQ in argument 0", auditArch, unix.SYS_IOCTL, []uint64{unix.SIOCOUTQ, unix.TIOCSTI}, "errno EPERM"},
		{"mount", auditArch, unix.SYS_MOUNT, nil, "errno EPERM"},
		{"umount2", auditArch, unix.SYS_UMOUNT2, nil, "errno EPERM"},
		{"pivot_root", auditArch, unix.SYS_PIVOT_ROOT, nil, "errno EPERM"},
		{"unshare", auditArch, unix.SYS_UNSHARE, nil, "errno EPERM"},
		{"setns", auditArch, unix.SYS_SETNS, nil, "errno EPERM"},
		{"ptrace", auditArch, unix.SYS_PTRACE, nil, "errno EPERM"},
		{"process_vm_writev", auditArch, unix.SYS_PROCESS_VM_WRITEV, nil, "errno EPERM"},
		{"bpf", auditArch, unix.SYS_BPF, nil, "errno EPERM"},
		{"io_uring_setup", auditArch, unix.SYS_IO_URING_SETUP, nil, "errno EPERM"},
		{"keyctl", auditArch, unix.SYS_KEYCTL, nil, "errno EPERM"},
		{"seccomp", auditArch, unix.SYS_SECCOMP, nil, "errno EPERM"},
		{"capset", auditArch, unix.SYS_CAPSET, nil, "errno EPERM"},
		{"setuid", auditArch, unix.SYS_SETUID, nil, "errno EPERM"},
		{"pidfd_open", auditArch, unix.SYS_PIDFD_OPEN, nil, "errno EPERM"},
		{"tgkill self", auditArch, unix.SYS_TGKILL, []uint64{pid, pid + 3, uint64(unix.SIGURG)}, "allow"},
		{"tgkill another process", auditArch, unix.SYS_TGKILL, []uint64{pid + 1, pid + 1, uint64(unix.SIGKILL)}, "errno EPERM"},
		{"kill self", auditArch, unix.SYS_KILL, []uint64{pid, uint64(unix.SIGABRT)}, "allow"},
		{"kill another process", auditArch, unix.SYS_KILL, []uint64{1, uint64(unix.SIGKILL)}, "errno EPERM"},
		{"kill every process", auditArch, unix.SYS_KILL, []uint64{^uint64(0), uint64(unix.SIGKILL)}, "errno EPERM"},
		{"prctl PR_SET_VMA", auditArch, unix.SYS_PRCTL, []uint64{unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME}, "allow"},
		{"prctl PR_SET_DUMPABLE", auditArch, unix.SYS_PRCTL, []uint64{unix.PR_SET_DUMPABLE, 1}, "errno EPERM"},
		{"prctl PR_SET_SECCOMP", auditArch, unix.SYS_PRCTL, []uint64{unix.PR_SET_SECCOMP}, "errno EPERM"},
		{"prlimit64 self", auditArch, unix.SYS_PRLIMIT64, []uint64{0, unix.RLIMIT_NOFILE}, "allow"},
		{"prlimit64 another process", auditArch, unix.SYS_PRLIMIT64, []uint64{1, unix.RLIMIT_NOFILE}, "errno EPERM"},
		{"x32 ABI read", auditArch, unix.SYS_READ | 0x40000000, nil, "errno EPERM"},
		{"i386 syscall", unix.AUDIT_ARCH_I386, 3 /* read on i386 */, nil, "kill-process"},
		{"another architecture", unix.AUDIT_ARCH_AARCH64, 63, nil, "kill-process"},
		{"out of the table", auditArch, 999, nil, "errno EPERM"},
	}
	for _, tt := range tests {
		got, err := v.Run(seccompData(tt.arch, tt.nr, tt.args...))
		if err != nil {
			t.Errorf("%s: run filter: %v", tt.name, err)
			continue
		}
		if a := actionName(uint32(got)); a != tt.want {
			t.Errorf("%s (arch %#x, nr %d, args %#x): %s; want %s", tt.name, tt.arch, tt.nr, tt.args, a, tt.want)
		}
	}
	// Without openRead (no Landlock to confine it), openat is refused
	// whatever its flags, and nothing else changes.
	closed := vm(t, pid, false)
	for _, tt := range tests {
		want := tt.want
		if tt.nr == unix.SYS_OPENAT && tt.arch == auditArch {
			want = "errno EPERM"
		}
		got, err := closed.Run(seccompData(tt.arch, tt.nr, tt.args...))
		if a := actionName(uint32(got)); err != nil || a != want {
			t.Errorf("without openRead, %s: %s, %v; want %s", tt.name, a, err, want)
		}
	}
	if n, m := len(Allowed(true)), len(Allowed(false)); n != m+1 {
		t.Errorf("Allowed(true) lists %d syscalls, Allowed(false) %d; want one more (openat)", n, m)
	}
}

// TestFilterAllowsEveryRule: each syscall of the table gets its rule's
// verdict for the arguments the rule allows, whatever its position.
func TestFilterAllowsEveryRule(t *testing.T) {
	if !SeccompSupported() {
		t.Skip(ErrArch)
	}
	const pid = 77
	v := vm(t, pid, true)
	seen := map[uint32]string{}
	for _, r := range rules {
		if prev, dup := seen[r.nr]; dup {
			t.Errorf("syscall %d is in the table twice (%s, %s): only the first rule counts", r.nr, prev, r.name)
		}
		seen[r.nr] = r.name
		var args []uint64
		want := uint32(retAllow)
		switch r.kind {
		case arg0In:
			if r.self {
				args = []uint64{pid}
			} else {
				args = []uint64{uint64(r.vals[len(r.vals)-1])}
			}
		case arg1In:
			args = []uint64{3, uint64(r.vals[len(r.vals)-1])}
		case cloneThread:
			args = []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}
		case openReadOnly:
			args = []uint64{atFDCWD, 0, unix.O_RDONLY | unix.O_CLOEXEC}
		case errnoRet:
			want = retErrno | uint32(r.errno)
		}
		got, err := v.Run(seccompData(auditArch, r.nr, args...))
		if err != nil || uint32(got) != want {
			t.Errorf("%s (nr %d, args %v): %s, %v; want %s", r.name, r.nr, args, actionName(uint32(got)), err, actionName(want))
		}
	}
}
