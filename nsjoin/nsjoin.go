// Package nsjoin gets a tap device from inside another process's user and
// network namespaces.
//
// Go cannot setns(CLONE_NEWUSER) from a running program (the runtime is
// multithreaded before main), so OpenTap re-executes /proc/self/exe as a
// short-lived child. A cgo constructor (nsenter.c) joins the namespaces in
// that child before the Go runtime starts; the child then creates or attaches
// to the tap, optionally configures it, sends the fd back over a
// SOCK_SEQPACKET socketpair with SCM_RIGHTS, and exits. The parent never
// leaves its own namespaces. docs/design.md explains the choice.
//
// It owns the child and the socketpair; the fd it returns is the caller's.
// It may import tap (which runs in the child) and pollfd, nothing else of
// usernet, and never gVisor: the child must stay small.
package nsjoin

/*
extern int usernet_nsjoin_step;
extern int usernet_nsjoin_errno;
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/tap"
)

const (
	envChild  = "_USERNET_NSJOIN"
	envUserFD = "_USERNET_NSJOIN_USERFD"
	envNetFD  = "_USERNET_NSJOIN_NETFD"
	envReq    = "_USERNET_NSJOIN_REQ"
	childSock = 3 // the child's end of the socketpair, first of ExtraFiles
)

// Target names the namespaces to join.
type Target struct {
	// PID selects /proc/PID/ns/net (--netns-type=pid).
	PID int
	// NetnsPath selects a network namespace file (--netns-type=path).
	NetnsPath string
	// UsernsPath, when set, is the user namespace to join (--userns-path).
	// Otherwise the owner of the network namespace is joined when it is
	// not ours (NS_GET_USERNS), falling back to /proc/PID/ns/user.
	UsernsPath string
}

func (t Target) String() string {
	if t.NetnsPath != "" {
		return t.NetnsPath
	}
	return "/proc/" + strconv.Itoa(t.PID) + "/ns/net"
}

// Request says what the child does in the namespace.
type Request struct {
	Tap       tap.Options
	Configure bool
	Config    tap.Config `json:",omitempty"`
	// Announce prints slirp4netns's `sent tapfd=N for TAP` on stderr.
	Announce bool
	// ProcNet also brings back the namespace's /proc/net/tcp, tcp6, udp
	// and udp6, opened inside it (Opened.ProcNet).
	ProcNet bool `json:",omitempty"`
	// LoopbackUp brings lo up without Configure (pasta always does).
	LoopbackUp bool `json:",omitempty"`
}

// ProcNetFiles are the files Request.ProcNet opens, in Opened.ProcNet's
// order.
var ProcNetFiles = []string{"tcp", "tcp6", "udp", "udp6"}

// Opened is what OpenTap brings back from the namespace.
type Opened struct {
	// Tap is the tap's fd, non-blocking.
	Tap *os.File
	// ProcNet are the namespace's ProcNetFiles when Request.ProcNet
	// asked for them: opened inside the namespace, they show its sockets
	// whenever they are read again from the start (pasta's "auto"
	// forwarding reads them once a second).
	ProcNet []*os.File
}

// Close closes every file.
func (o *Opened) Close() {
	if o.Tap != nil {
		o.Tap.Close()
	}
	for _, f := range o.ProcNet {
		f.Close()
	}
}

type reply struct {
	Error string `json:",omitempty"`
}

// IsChild reports whether this process was started by OpenTap.
func IsChild() bool { return os.Getenv(envChild) == "1" }

// ChildMain does the child's work and returns its exit code. main calls it
// first thing when IsChild.
func ChildMain() int {
	sock := os.NewFile(childSock, "nsjoin")
	f, announce, procNet, err := childOpen()
	var r reply
	var rights []byte
	if err != nil {
		r.Error = err.Error()
	} else {
		fds := []int{int(f.Fd())}
		for _, p := range procNet {
			fds = append(fds, int(p.Fd()))
		}
		rights = unix.UnixRights(fds...)
		if announce {
			fmt.Fprintf(os.Stderr, "sent tapfd=%d for %s\n", f.Fd(), f.Name()[len("tap:"):])
		}
	}
	msg, _ := json.Marshal(r)
	if err := unix.Sendmsg(int(sock.Fd()), msg, rights, nil, 0); err != nil {
		fmt.Fprintf(os.Stderr, "usernet: nsjoin child: send reply: %v\n", err)
		return 1
	}
	return 0
}

func childOpen() (*os.File, bool, []*os.File, error) {
	switch C.usernet_nsjoin_step {
	case 1:
		return nil, false, nil, fmt.Errorf("join user namespace: %w", unix.Errno(C.usernet_nsjoin_errno))
	case 2:
		return nil, false, nil, fmt.Errorf("join network namespace: %w", unix.Errno(C.usernet_nsjoin_errno))
	}
	var req Request
	if err := json.Unmarshal([]byte(os.Getenv(envReq)), &req); err != nil {
		return nil, false, nil, fmt.Errorf("decode request: %w", err)
	}
	var procNet []*os.File
	if req.ProcNet {
		// /proc/self/net is this thread's network namespace: the
		// target's, joined before Go started.
		for _, name := range ProcNetFiles {
			p, err := os.Open("/proc/self/net/" + name)
			if err != nil {
				return nil, false, nil, fmt.Errorf("open the namespace's /proc/net/%s: %w", name, err)
			}
			procNet = append(procNet, p)
		}
	}
	f, err := tap.Open(req.Tap)
	if err != nil {
		return nil, false, nil, err
	}
	if req.Configure {
		if err := tap.Configure(req.Tap.Name, req.Config); err != nil {
			f.Close()
			return nil, false, nil, err
		}
	} else if req.LoopbackUp {
		if err := tap.LoopbackUp(); err != nil {
			f.Close()
			return nil, false, nil, err
		}
	}
	return f, req.Announce, procNet, nil
}

// OpenTap joins t's namespaces in a child process, opens the tap there as
// req says, and returns its fd (non-blocking) and the other files req
// asked for, all owned by the caller.
func OpenTap(ctx context.Context, t Target, req Request) (*Opened, error) {
	if err := tap.ValidateName(req.Tap.Name); err != nil {
		return nil, err
	}
	reqJSON, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	cmd, parentEnd, err := spawn(t, "1", envReq+"="+string(reqJSON))
	if err != nil {
		return nil, err
	}
	defer parentEnd.Close()

	want := 1
	if req.ProcNet {
		want += len(ProcNetFiles)
	}
	o, rerr := receive(ctx, parentEnd, want)
	if rerr != nil {
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	if rerr != nil {
		return nil, fmt.Errorf("%s: %w", t, rerr)
	}
	if werr != nil {
		o.Close()
		return nil, fmt.Errorf("nsjoin child: %w", werr)
	}
	return o, nil
}

// receive reads the child's one reply and the want fds that come with it:
// the tap's first.
func receive(ctx context.Context, sock *os.File, want int) (*Opened, error) {
	c, err := net.FileConn(sock)
	if err != nil {
		return nil, fmt.Errorf("wrap socket: %w", err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	stop := context.AfterFunc(ctx, func() { uc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*want))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read reply of nsjoin child: %w", err)
	}
	if n == 0 {
		return nil, errors.New("nsjoin child exited without a reply")
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err == nil && len(msgs) == 1 {
			fds, _ = unix.ParseUnixRights(&msgs[0])
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	var r reply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		closeAll()
		return nil, fmt.Errorf("decode reply of nsjoin child: %w", err)
	}
	if r.Error != "" {
		closeAll()
		return nil, errors.New(r.Error)
	}
	if len(fds) != want {
		closeAll()
		return nil, fmt.Errorf("nsjoin child sent %d fds, want %d", len(fds), want)
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		closeAll()
		return nil, fmt.Errorf("set tap fd non-blocking: %w", err)
	}
	o := &Opened{Tap: os.NewFile(uintptr(fds[0]), "tap")}
	for i, fd := range fds[1:] {
		o.ProcNet = append(o.ProcNet, os.NewFile(uintptr(fd), "netns /proc/net/"+ProcNetFiles[i]))
	}
	return o, nil
}

// openNamespaces opens the network namespace to join and, when it is not
// ours, the user namespace to join first.
func openNamespaces(t Target) (netns, userns *os.File, err error) {
	netPath := t.String()
	netns, err = os.Open(netPath)
	if err != nil {
		if t.NetnsPath == "" && errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s: no such process %d", netPath, t.PID)
		}
		return nil, nil, err
	}
	if err := checkNS(netns, unix.CLONE_NEWNET); err != nil {
		netns.Close()
		return nil, nil, fmt.Errorf("%s: %w", netPath, err)
	}
	userns, err = ownerUserns(t, netns)
	if err != nil {
		netns.Close()
		return nil, nil, err
	}
	return netns, userns, nil
}

func ownerUserns(t Target, netns *os.File) (*os.File, error) {
	var userns *os.File
	switch {
	case t.UsernsPath != "":
		f, err := os.Open(t.UsernsPath)
		if err != nil {
			return nil, err
		}
		if err := checkNS(f, unix.CLONE_NEWUSER); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", t.UsernsPath, err)
		}
		userns = f
	default:
		// The namespace that owns the netns is the one in which we need
		// CAP_NET_ADMIN. EPERM means it is not below ours: nothing to join.
		fd, err := unix.IoctlRetInt(int(netns.Fd()), unix.NS_GET_USERNS)
		if err == nil {
			userns = os.NewFile(uintptr(fd), "userns")
		} else if t.PID > 0 && !errors.Is(err, unix.EPERM) {
			f, err := os.Open("/proc/" + strconv.Itoa(t.PID) + "/ns/user")
			if err != nil {
				return nil, err
			}
			userns = f
		}
	}
	if userns == nil {
		return nil, nil
	}
	same, err := sameAsOurs(userns)
	if err != nil || same {
		userns.Close()
		return nil, err
	}
	return userns, nil
}

func sameAsOurs(userns *os.File) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(userns.Fd()), &a); err != nil {
		return false, fmt.Errorf("stat %s: %w", userns.Name(), err)
	}
	if err := unix.Stat("/proc/self/ns/user", &b); err != nil {
		return false, fmt.Errorf("stat /proc/self/ns/user: %w", err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// checkNS makes sure f is a namespace file of the given type, so that a
// wrong path gets a clear error rather than EINVAL from setns.
func checkNS(f *os.File, nstype int) error {
	got, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return errors.New("not a namespace file")
		}
		return fmt.Errorf("inspect namespace: %w", err)
	}
	if got != nstype {
		if nstype == unix.CLONE_NEWNET {
			return errors.New("not a network namespace")
		}
		return errors.New("not a user namespace")
	}
	return nil
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "_USERNET_") {
			out = append(out, e)
		}
	}
	return out
}

// spawn starts this program again as a child that joins t's namespaces
// before Go starts (nsenter.c), in the given mode ("1": the tap child,
// "broker": the socket broker), with a SOCK_SEQPACKET socketpair as its
// fd 3; it returns the child and the parent's end.
func spawn(t Target, mode string, env ...string) (*exec.Cmd, *os.File, error) {
	netns, userns, err := openNamespaces(t)
	if err != nil {
		return nil, nil, err
	}
	defer netns.Close()
	if userns != nil {
		defer userns.Close()
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	parentEnd := os.NewFile(uintptr(fds[0]), "nsjoin-parent")
	childEnd := os.NewFile(uintptr(fds[1]), "nsjoin-child")
	defer childEnd.Close()
	exe, err := os.Executable()
	if err != nil {
		parentEnd.Close()
		return nil, nil, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{exe, "nsjoin-child"}
	if mode != "broker" {
		// The broker lives as long as we do and prints nothing: it must
		// not hold our stderr, a pipe the caller may wait on (pasta's
		// command line, which detaches).
		cmd.Stderr = os.Stderr
	}
	cmd.ExtraFiles = []*os.File{childEnd, netns}
	env = append(env, envChild+"="+mode, envNetFD+"=4")
	if userns != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, userns)
		env = append(env, envUserFD+"=5")
	}
	cmd.Env = append(cleanEnv(os.Environ()), env...)
	if err := cmd.Start(); err != nil {
		parentEnd.Close()
		return nil, nil, fmt.Errorf("start nsjoin child: %w", err)
	}
	return cmd, parentEnd, nil
}
