// Package sandbox confines a running usernet the way slirp4netns's
// --enable-sandbox and --enable-seccomp do: its own mount namespace (and
// user namespace when unprivileged) with an empty read-only root holding
// only /etc and /run, no capability but CAP_NET_BIND_SERVICE,
// no_new_privs, and a seccomp allow-list.
//
// A Go program cannot do this to itself: it is multithreaded before main,
// so unshare(CLONE_NEWUSER) is refused, and capabilities and seccomp
// filters are per thread (syscall.AllThreadsSyscall does not work with
// cgo). So the process re-executes itself in place (Exec: same PID, same
// argv, the fds it needs inherited, its state in the environment), and a
// cgo constructor (sandbox.c) sets everything up in the new image before
// the Go runtime starts; every thread the runtime then creates inherits it.
// Resume hands the state back to main. docs/sandbox.md has the details.
//
// It must not import gVisor or any other usernet package: it runs first in
// every usernet process and must stay small.
package sandbox

/*
extern const char *usernet_sandbox_failed;
extern int usernet_sandbox_errno;
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Environment of a re-execution. The C constructor reads the first three.
const (
	envOn    = "_USERNET_SANDBOX"
	envFS    = "_USERNET_SANDBOX_FS"
	envBPF   = "_USERNET_SANDBOX_BPF"
	envBinds = "_USERNET_SANDBOX_BINDS"
	envComm  = "_USERNET_SANDBOX_COMM"
	envState = "_USERNET_SANDBOX_STATE"
	envRead  = "_USERNET_SANDBOX_READ"
	envRunAs = "_USERNET_SANDBOX_RUNAS"
)

// Config says what the re-executed process enters.
type Config struct {
	// Mounts is --enable-sandbox: a new mount namespace (and user
	// namespace, without CAP_SYS_ADMIN) whose root holds /etc and /run
	// read-only, and no capability but CAP_NET_BIND_SERVICE.
	Mounts bool
	// Seccomp is --enable-seccomp: the allow-list filter (seccomp.go).
	Seccomp bool
	// Binds are host directories that Mounts shows at their own path
	// besides /etc and /run, with what is mounted below them. Read-only
	// ones under /etc or /run are there already.
	Binds []Bind
	// ConfineFS makes the process unable, once in the sandbox, to change
	// anything in the file system (write, truncate, create, remove,
	// rename, link, execute: every right of the kernel's Landlock ABI) and
	// to open files for reading or list directories but beneath Read
	// (nothing if Read is empty), with a Landlock ruleset; Env fails if the
	// kernel has none (see LandlockSupported). Fds opened before keep
	// their rights.
	ConfineFS bool
	// Read are the directories ConfineFS leaves readable. With Seccomp
	// and ConfineFS, a non-empty Read makes the filter allow openat
	// for reading (refused otherwise).
	Read []string
	// RunAs, when set, is who the process becomes before its runtime
	// starts, without supplementary groups (pasta's --runas), keeping
	// CAP_NET_BIND_SERVICE with Mounts.
	RunAs *IDs
}

// IDs are a user and a group.
type IDs struct{ UID, GID int }

// Bind is a host directory shown in the sandbox. Path must be absolute.
type Bind struct {
	Path     string
	Writable bool
}

// Enabled reports whether c asks for anything.
func (c Config) Enabled() bool { return c.Mounts || c.Seccomp }

// Env returns the environment entries that make a start of this binary as
// process pid enter the sandbox c and hand state to Resume. Exec uses it;
// tests use it to start such a process themselves.
func Env(c Config, pid int, state []byte) ([]string, error) {
	env := []string{envOn + "=1", envState + "=" + string(state)}
	if c.Mounts {
		env = append(env, envFS+"=1")
		var lines []string
		for _, b := range c.Binds {
			p := filepath.Clean(b.Path)
			if !filepath.IsAbs(p) || strings.ContainsAny(p, "\n\x00") {
				return nil, fmt.Errorf("sandbox: cannot bind %q", b.Path)
			}
			lines = append(lines, map[bool]string{false: "ro ", true: "rw "}[b.Writable]+p)
		}
		if len(lines) > 0 {
			env = append(env, envBinds+"="+strings.Join(lines, "\n"))
		}
	}
	if c.RunAs != nil {
		if c.RunAs.UID < 0 || c.RunAs.GID < 0 {
			return nil, fmt.Errorf("sandbox: cannot run as %d:%d", c.RunAs.UID, c.RunAs.GID)
		}
		env = append(env, fmt.Sprintf("%s=%d:%d", envRunAs, c.RunAs.UID, c.RunAs.GID))
	}
	if comm, err := os.ReadFile("/proc/self/comm"); err == nil {
		// Else the kernel names the new image after /proc/self/exe: "exe".
		env = append(env, envComm+"="+strings.TrimSpace(string(comm)))
	}
	openRead := false
	if c.ConfineFS {
		if !LandlockSupported() {
			return nil, errors.New("sandbox: confining the file system needs Landlock, which this kernel does not offer")
		}
		for _, p := range c.Read {
			if !filepath.IsAbs(p) || strings.ContainsAny(p, "\n\x00") {
				return nil, fmt.Errorf("sandbox: cannot allow reading %q", p)
			}
		}
		env = append(env, envRead+"="+strings.Join(c.Read, "\n"))
		openRead = len(c.Read) > 0
	} else if len(c.Read) > 0 {
		return nil, errors.New("sandbox: Read without ConfineFS")
	}
	if c.Seccomp {
		h, err := filterHex(pid, openRead)
		if err != nil {
			return nil, err
		}
		env = append(env, envBPF+"="+h)
	}
	return env, nil
}

// Exec replaces the process image with a fresh start of the same binary
// (/proc/self/exe), with the same PID and argv, that enters the sandbox c
// before its Go runtime starts. The fds in keep stay open across it, under
// the same numbers (their close-on-exec flag is cleared); every other fd
// opened by Go is closed. state (any bytes without NUL, JSON say) is what
// Resume returns in the new image. Exec returns only on failure, having
// changed nothing but the close-on-exec flags.
func Exec(c Config, state []byte, keep ...int) error {
	if strings.IndexByte(string(state), 0) >= 0 {
		return errors.New("sandbox state contains a NUL byte")
	}
	env, err := Env(c, os.Getpid(), state)
	if err != nil {
		return err
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keep fd %d across exec: %w", fd, err)
		}
	}
	env = append(cleanEnv(os.Environ()), env...)
	err = syscall.Exec("/proc/self/exe", os.Args, env)
	for _, fd := range keep {
		unix.CloseOnExec(fd)
	}
	return fmt.Errorf("re-execute into the sandbox: %w", err)
}

// Resumed reports whether this process was started by Exec (or with Env).
// main calls it first thing.
func Resumed() bool { return os.Getenv(envOn) == "1" }

// Resume returns the state given to Exec, or why entering the sandbox
// failed; the process must then exit without serving. It removes the
// sandbox's entries from the environment.
func Resume() ([]byte, error) {
	state := os.Getenv(envState)
	for _, k := range []string{envOn, envFS, envBPF, envBinds, envComm, envState, envRead, envRunAs} {
		os.Unsetenv(k)
	}
	if C.usernet_sandbox_failed != nil {
		return nil, fmt.Errorf("sandbox: %s: %w", C.GoString(C.usernet_sandbox_failed), unix.Errno(C.usernet_sandbox_errno))
	}
	return []byte(state), nil
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, envOn) {
			out = append(out, e)
		}
	}
	return out
}

// LandlockSupported reports whether the kernel offers Landlock (ABI 1 or
// later: reading files and directories can be confined), which Config.Read
// needs.
func LandlockSupported() bool {
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	return errno == 0 && int(abi) >= 1
}
