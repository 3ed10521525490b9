package sandbox

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The filter is an allow-list: a syscall not in the table fails with EPERM
// (x32 calls too: they arrive as this architecture with bit 30 set and match
// no rule); a syscall of another architecture (i386) kills the process.
// The table is per architecture (syscalls_GOARCH.go); docs/sandbox.md says
// how it was found and how to find what a new Go or gVisor version needs.

// Actions, as in <linux/seccomp.h>.
const (
	retAllow       = unix.SECCOMP_RET_ALLOW
	retKillProcess = unix.SECCOMP_RET_KILL_PROCESS
	retErrno       = unix.SECCOMP_RET_ERRNO
)

// deny is what a syscall outside the allow-list gets.
const deny = retErrno | uint32(unix.EPERM)

// Offsets in struct seccomp_data. Loads are 32-bit, in the machine's byte
// order; argument i's low word is at argOff(i) on little-endian machines.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

func argLow(i int) uint32 { return offArgs + 8*uint32(i) }

// ruleKind says what a rule does with its syscall.
type ruleKind int

const (
	allow        ruleKind = iota // always allowed
	errnoRet                     // fails with errno (clone3 → ENOSYS, so that glibc falls back to clone)
	arg0In                       // allowed when the low word of argument 0 is one of vals
	arg1In                       // allowed when the low word of argument 1 is one of vals
	cloneThread                  // clone that makes a thread (CLONE_THREAD) and no namespace
	openReadOnly                 // openat whose flags (argument 2) neither write nor create
)

type rule struct {
	name  string // as in the syscall table, for messages and docs
	nr    uint32
	kind  ruleKind
	vals  []uint32   // arg0In, arg1In: the values allowed
	self  bool       // arg0In: argument 0 must be the pid given to Filter
	errno unix.Errno // errnoRet
}

// cloneNamespaces are the clone flags that make namespaces: a thread never
// asks for them. CLONE_NEWTIME is left out: for clone(2) it is part of the
// exit signal.
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUSER | unix.CLONE_NEWNET | unix.CLONE_NEWPID |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP

// openWrites are the open flags that write or create: an openReadOnly
// rule refuses any of them (O_TMPFILE needs a write mode, so it is out too).
const openWrites = unix.O_WRONLY | unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC | unix.O_APPEND

// ErrArch means there is no seccomp filter for this architecture.
var ErrArch = errors.New("--enable-seccomp is only implemented for amd64 (linux/" + runtime.GOARCH + ")")

// program assembles the filter for the table, for the process pid; the
// openReadOnly rules are left out (so refused) unless openRead.
func program(arch uint32, rules []rule, pid int, openRead bool) ([]bpf.Instruction, error) {
	if arch == 0 {
		return nil, ErrArch
	}
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch, SkipTrue: 1},
		bpf.RetConstant{Val: retKillProcess},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	// Each rule is "if nr != rule.nr, skip the block; block", and every
	// path through a block returns, so no jump crosses another rule: no
	// offset can outgrow the 8 bits of a conditional jump.
	for _, r := range rules {
		if r.kind == openReadOnly && !openRead {
			continue
		}
		var block []bpf.Instruction
		switch r.kind {
		case allow:
			block = []bpf.Instruction{bpf.RetConstant{Val: retAllow}}
		case errnoRet:
			block = []bpf.Instruction{bpf.RetConstant{Val: retErrno | uint32(r.errno)}}
		case arg0In, arg1In:
			vals := r.vals
			if r.self {
				vals = []uint32{uint32(pid)}
			}
			if len(vals) == 0 || len(vals) > 200 {
				return nil, fmt.Errorf("seccomp rule %s: %d values", r.name, len(vals))
			}
			arg := 0
			if r.kind == arg1In {
				arg = 1
			}
			block = append(block, bpf.LoadAbsolute{Off: argLow(arg), Size: 4})
			for i, v := range vals {
				// Skip to the allow at the end of the block.
				block = append(block, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: uint8(len(vals) - i)})
			}
			block = append(block, bpf.RetConstant{Val: deny}, bpf.RetConstant{Val: retAllow})
		case cloneThread:
			block = []bpf.Instruction{
				bpf.LoadAbsolute{Off: argLow(0), Size: 4},
				bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: cloneNamespaces, SkipTrue: 2},
				bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: unix.CLONE_THREAD, SkipFalse: 1},
				bpf.RetConstant{Val: retAllow},
				bpf.RetConstant{Val: deny},
			}
		case openReadOnly:
			block = []bpf.Instruction{
				bpf.LoadAbsolute{Off: argLow(2), Size: 4},
				bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: openWrites, SkipTrue: 1},
				bpf.RetConstant{Val: retAllow},
				bpf.RetConstant{Val: deny},
			}
		default:
			return nil, fmt.Errorf("seccomp rule %s: unknown kind %d", r.name, r.kind)
		}
		if len(block) > 255 {
			return nil, fmt.Errorf("seccomp rule %s: block too long", r.name)
		}
		p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: r.nr, SkipTrue: uint8(len(block))})
		p = append(p, block...)
	}
	p = append(p, bpf.RetConstant{Val: deny})
	if len(p) > 4096 {
		return nil, fmt.Errorf("seccomp filter: %d instructions, more than the kernel takes", len(p))
	}
	return p, nil
}

// Filter returns the seccomp program for a process with the given pid (the
// pid is part of the program: kill and tgkill may target only the process
// itself), as struct sock_filter bytes in the machine's byte order.
//
// openRead allows openat for reading: only for a process whose reads
// Landlock confines (Config.Read).
func Filter(pid int, openRead bool) ([]byte, error) {
	p, err := program(auditArch, rules, pid, openRead)
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(p)
	if err != nil {
		return nil, fmt.Errorf("seccomp filter: %w", err)
	}
	b := make([]byte, 0, 8*len(raw))
	for _, ins := range raw {
		b = binary.NativeEndian.AppendUint16(b, ins.Op)
		b = append(b, ins.Jt, ins.Jf)
		b = binary.NativeEndian.AppendUint32(b, ins.K)
	}
	return b, nil
}

func filterHex(pid int, openRead bool) (string, error) {
	b, err := Filter(pid, openRead)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Allowed lists the syscalls the filter lets through (some only with
// certain arguments), for docs and messages.
func Allowed(openRead bool) []string {
	var names []string
	for _, r := range rules {
		if r.kind != errnoRet && (r.kind != openReadOnly || openRead) {
			names = append(names, r.name)
		}
	}
	return names
}

// SeccompSupported reports whether this architecture has a filter.
func SeccompSupported() bool { return auditArch != 0 }
