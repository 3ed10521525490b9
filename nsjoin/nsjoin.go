// Package nsjoin gets a tap device from inside another process's user and
// network namespaces.
//
// Go cannot setns(CLONE_NEWUSER) from a running program (the runtime is
// multithreaded before main). OpenTap clones the calling thread into a
// short-lived child in C (tapchild.c) that shares our memory and fd table,
// joins the namespaces, creates or attaches to the tap, optionally
// configures it with netlink, and exits: the fds it opened are ours. The
// socket broker, which lives on, is a re-execution of /proc/self/exe whose
// cgo constructor (nsenter.c) joins before the Go runtime starts. This
// process never leaves its own namespaces. docs/design.md explains the
// choices.
//
// It owns its children; the fds it returns are the caller's. It may import
// tap (the messages that configure it) and pollfd, nothing else of usernet,
// and never gVisor.
package nsjoin

/*
#include <stdlib.h>
#include "tapchild.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/tap"
)

const (
	envChild  = "_USERNET_NSJOIN"
	envUserFD = "_USERNET_NSJOIN_USERFD"
	envNetFD  = "_USERNET_NSJOIN_NETFD"
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
	Config    tap.Config
	// Announce prints slirp4netns's `sent tapfd=N for TAP` on stderr.
	Announce bool
	// ProcNet also brings back the namespace's /proc/net/tcp, tcp6, udp
	// and udp6, opened inside it (Opened.ProcNet).
	ProcNet bool
	// LoopbackUp brings lo up without Configure (pasta always does).
	LoopbackUp bool
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

// OpenTap joins t's namespaces in a child, opens the tap there as req
// says, and returns its fd (non-blocking) and the other files req asked
// for, all owned by the caller. The child makes only system calls that the
// kernel answers at once, so there is nothing for ctx to interrupt.
func OpenTap(ctx context.Context, t Target, req Request) (*Opened, error) {
	if err := tap.ValidateName(req.Tap.Name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var msgs []tap.Message
	if req.Configure {
		msgs = tap.ConfigMessages(req.Tap.Name, req.Config)
	} else if req.LoopbackUp {
		msgs = tap.LoopbackMessages()
	}
	netns, userns, err := openNamespaces(t)
	if err != nil {
		return nil, err
	}
	defer netns.Close()
	if userns != nil {
		defer userns.Close()
	}

	// C memory: the child reads and writes it while we sleep.
	r := (*C.struct_usernet_tap_req)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_usernet_tap_req{}))))
	defer C.free(unsafe.Pointer(r))
	r.userfd, r.netfd = -1, C.int(netns.Fd())
	if userns != nil {
		r.userfd = C.int(userns.Fd())
	}
	if req.ProcNet {
		r.procnet = 1
	}
	for i := 0; i < len(req.Tap.Name); i++ {
		r.name[i] = C.char(req.Tap.Name[i])
	}
	r.tunflags = C.int(tap.Flags(req.Tap))
	r.offloads = -1
	if req.Tap.VnetHdr {
		r.offloads = tap.Offloads
	}
	if len(msgs) > 0 {
		b := encodeMessages(msgs)
		r.msgs = (*C.uchar)(C.CBytes(b))
		defer C.free(unsafe.Pointer(r.msgs))
		r.msgslen = C.int(len(b))
	}
	if C.usernet_open_tap(r) != 0 {
		return nil, fmt.Errorf("%s: %w", t, childError(req, msgs, int(r.step), int(r.index), int(r.err)))
	}
	o := &Opened{Tap: os.NewFile(uintptr(r.tapfd), "tap")}
	if req.ProcNet {
		for i, name := range ProcNetFiles {
			o.ProcNet = append(o.ProcNet, os.NewFile(uintptr(r.procfds[i]), "netns /proc/net/"+name))
		}
	}
	if req.Announce {
		fmt.Fprintf(os.Stderr, "sent tapfd=%d for %s\n", r.tapfd, req.Tap.Name)
	}
	return o, nil
}

// encodeMessages lays msgs out for tapchild.c: a struct usernet_tap_msg
// before each, each padded to 4 bytes.
func encodeMessages(msgs []tap.Message) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.NativeEndian.AppendUint32(b, uint32(len(m.Bytes)))
		b = binary.NativeEndian.AppendUint32(b, uint32(m.IndexAt))
		existOK := uint32(0)
		if m.ExistOK {
			existOK = 1
		}
		b = binary.NativeEndian.AppendUint32(b, existOK)
		b = append(b, m.Bytes...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// childError says what the child could not do, as the Go code that did it
// before said it.
func childError(req Request, msgs []tap.Message, step, index, errno int) error {
	err := unix.Errno(errno)
	name := req.Tap.Name
	switch step {
	case C.USERNET_TAP_USERNS:
		return fmt.Errorf("join user namespace: %w", err)
	case C.USERNET_TAP_NETNS:
		return fmt.Errorf("join network namespace: %w", err)
	case C.USERNET_TAP_PROCNET_OPEN:
		f := ProcNetFiles[index]
		return fmt.Errorf("open the namespace's /proc/net/%s: %w", f, &os.PathError{Op: "open", Path: "/proc/self/net/" + f, Err: err})
	case C.USERNET_TAP_OPEN:
		return fmt.Errorf("open /dev/net/tun: %w", err)
	case C.USERNET_TAP_TUNSETIFF:
		if err == unix.EINVAL {
			return fmt.Errorf("create tap %s: %w (does a non-tap device of that name exist?)", name, err)
		}
		return fmt.Errorf("create tap %s: %w", name, err)
	case C.USERNET_TAP_OFFLOAD:
		return fmt.Errorf("enable offloads on tap %s: %w", name, err)
	case C.USERNET_TAP_NETLINK:
		return fmt.Errorf("netlink socket: %w", err)
	case C.USERNET_TAP_IFINDEX:
		return fmt.Errorf("find %s: %w", name, err)
	case C.USERNET_TAP_MESSAGE:
		if index >= 0 && index < len(msgs) {
			return fmt.Errorf("%s: %w", msgs[index].What, err)
		}
		return fmt.Errorf("netlink message %d: %w", index, err)
	case C.USERNET_TAP_CLONE:
		return fmt.Errorf("start nsjoin child: %w", err)
	case C.USERNET_TAP_DIED:
		return fmt.Errorf("nsjoin child died (status %d)", errno)
	}
	return fmt.Errorf("nsjoin child: step %d: %w", step, err)
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

// spawn starts this program again as the socket broker, which joins t's
// namespaces before Go starts (nsenter.c), with a SOCK_SEQPACKET
// socketpair as its fd 3; it returns the child and the parent's end.
func spawn(t Target) (*exec.Cmd, *os.File, error) {
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
	cmd.Args = []string{exe, "nsjoin-broker"}
	// The broker lives as long as we do and prints nothing: it must not
	// hold our stderr, a pipe the caller may wait on (pasta's command
	// line, which detaches).
	cmd.ExtraFiles = []*os.File{childEnd, netns}
	env := []string{envChild + "=broker", envNetFD + "=4"}
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
