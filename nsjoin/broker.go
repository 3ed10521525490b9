package nsjoin

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Broker makes sockets inside a target's network namespace for a process
// that stays outside it: a child joined to the namespaces before Go
// starts (nsenter.c) serves one request at a time over a socketpair and
// sends each socket back with SCM_RIGHTS. It never runs Go, so it costs
// little memory, and it exits when the Broker is closed or its parent
// dies. pasta's command line uses it for pasta's local path: a connection
// from the host's loopback to a forwarded port is made again from inside
// the namespace, where it comes from the namespace's own address.
//
// TCP connections are made from sockets the broker made ahead of time,
// freshBatch at a time, and that this process connects itself (a socket
// stays in the namespace it was made in): a new connection costs no round
// trip to the broker, and connections do not queue behind each other's.
type Broker struct {
	cmd   *exec.Cmd
	mu    sync.Mutex // one request at a time; guards sock and fresh
	sock  *os.File
	fresh [2][]int // unconnected TCP sockets made inside: IPv4, IPv6
}

// freshBatch is how many TCP sockets one request to the broker makes
// (nsenter.c's BROKER_MAX_FDS at most).
const freshBatch = 16

// brokerRequest is nsenter.c's struct broker_req.
type brokerRequest struct {
	Op     uint8
	Family uint8
	Type   uint8
	_      uint8
	Port   uint16
	_      uint16
	Addr   [16]byte
}

const (
	brokerConnect = 1
	brokerListen  = 2
	brokerFresh   = 3
)

// StartBroker starts the broker for t.
func StartBroker(t Target) (*Broker, error) {
	cmd, sock, err := spawn(t)
	if err != nil {
		return nil, err
	}
	b := &Broker{cmd: cmd, sock: sock}
	var hello [8]byte
	n, err := sock.Read(hello[:])
	if err == nil && n != len(hello) {
		err = errors.New("short hello")
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("%s: socket broker: %w", t, err)
	}
	step, errno := binary.NativeEndian.Uint32(hello[:4]), binary.NativeEndian.Uint32(hello[4:])
	switch step {
	case 0:
		return b, nil
	case 1:
		err = fmt.Errorf("join user namespace: %w", unix.Errno(errno))
	default:
		err = fmt.Errorf("join network namespace: %w", unix.Errno(errno))
	}
	b.Close()
	return nil, fmt.Errorf("%s: socket broker: %w", t, err)
}

// Close ends the broker and waits for it (not one rebuilt by
// BrokerFromFD: the child ends when its socket closes).
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sock == nil {
		return nil
	}
	b.sock.Close()
	b.sock = nil
	for i, fds := range b.fresh {
		for _, fd := range fds {
			unix.Close(fd)
		}
		b.fresh[i] = nil
	}
	if b.cmd == nil {
		return nil
	}
	return b.cmd.Wait()
}

// FD is the broker's socket, for a re-execution of this process that
// inherits it (the sandbox).
func (b *Broker) FD() int { return int(b.sock.Fd()) }

// BrokerFromFD rebuilds, in a re-executed process, the broker whose
// socket it inherited as fd.
func BrokerFromFD(fd int) *Broker {
	unix.CloseOnExec(fd)
	return &Broker{sock: os.NewFile(uintptr(fd), "broker")}
}

// request sends one request and returns the socket that comes back.
func (b *Broker) request(op uint8, network string, addr netip.AddrPort) (*os.File, error) {
	r := newBrokerRequest(op, network, addr.Addr())
	r.Port = addr.Port()
	b.mu.Lock()
	defer b.mu.Unlock()
	fds, err := b.roundTrip(r, 1)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), "broker "+network+" "+addr.String()), nil
}

// newBrokerRequest starts a request for a socket of network's type in
// a's family.
func newBrokerRequest(op uint8, network string, a netip.Addr) brokerRequest {
	r := brokerRequest{Op: op, Type: unix.SOCK_STREAM}
	if network == "udp" {
		r.Type = unix.SOCK_DGRAM
	}
	a = a.Unmap()
	if a.Is4() {
		r.Family = unix.AF_INET
		a4 := a.As4()
		copy(r.Addr[:], a4[:])
	} else {
		r.Family = unix.AF_INET6
		r.Addr = a.As16()
	}
	return r
}

// roundTrip sends r and returns the sockets that come back, at least one
// and at most `most`. The caller holds b.mu.
func (b *Broker) roundTrip(r brokerRequest, most int) ([]int, error) {
	msg, err := binary.Append(nil, binary.NativeEndian, r)
	if err != nil {
		return nil, err
	}
	if b.sock == nil {
		return nil, net.ErrClosed
	}
	fd := int(b.sock.Fd())
	if _, err := unix.Write(fd, msg); err != nil {
		return nil, fmt.Errorf("socket broker: %w", err)
	}
	var reply [4]byte
	oob := make([]byte, unix.CmsgSpace(4*most))
	n, oobn, _, _, err := unix.Recvmsg(fd, reply[:], oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n != len(reply) {
		return nil, fmt.Errorf("socket broker: reply: %v (%d bytes)", err, n)
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for i := range msgs {
			got, err := unix.ParseUnixRights(&msgs[i])
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if errno := binary.NativeEndian.Uint32(reply[:]); errno != 0 {
		closeAll(fds)
		return nil, os.NewSyscallError("socket broker", unix.Errno(errno))
	}
	if len(fds) == 0 || len(fds) > most {
		closeAll(fds)
		return nil, errors.New("socket broker: no socket in the reply")
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// freshTCP takes an unconnected TCP socket made inside the namespace,
// asking the broker for a new batch when none is left.
func (b *Broker) freshTCP(a netip.Addr) (int, error) {
	a = a.Unmap()
	i := 0
	if a.Is6() {
		i = 1
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.fresh[i]) == 0 {
		r := newBrokerRequest(brokerFresh, "tcp", a)
		r.Port = freshBatch
		fds, err := b.roundTrip(r, freshBatch)
		if err != nil {
			return -1, err
		}
		b.fresh[i] = fds
	}
	last := len(b.fresh[i]) - 1
	fd := b.fresh[i][last]
	b.fresh[i] = b.fresh[i][:last]
	return fd, nil
}

// DialTCP connects to dst from inside the namespace, within ctx.
func (b *Broker) DialTCP(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	fd, err := b.freshTCP(dst.Addr())
	if err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: err}
	}
	// Non-blocking: the handshake is waited for below, through the poller.
	if err := unix.Connect(fd, sockaddrOf(dst)); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	f := os.NewFile(uintptr(fd), "broker tcp "+dst.String())
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if err := waitConnected(ctx, tc); err != nil {
		tc.Close()
		return nil, opErr(err)
	}
	return tc, nil
}

// sockaddrOf is a's socket address, in the family of the sockets
// freshTCP hands out for it.
func sockaddrOf(a netip.AddrPort) unix.Sockaddr {
	if ip := a.Addr().Unmap(); ip.Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: ip.As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

// waitConnected waits for a non-blocking connect to complete.
func waitConnected(ctx context.Context, c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		if _, err := unix.Getpeername(int(fd)); err == nil {
			return true
		}
		soerr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			cerr = err
			return true
		}
		if soerr != 0 {
			cerr = syscall.Errno(soerr)
			return true
		}
		return false // still connecting
	})
	c.SetWriteDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return cerr
}

// DialUDP returns a UDP socket connected to dst from inside the namespace.
func (b *Broker) DialUDP(dst netip.AddrPort) (*net.UDPConn, error) {
	return brokerSocket(b, brokerConnect, "udp", dst, func(f *os.File) (*net.UDPConn, error) {
		c, err := net.FileConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UDPConn), nil
	})
}

// ListenUDP binds a UDP socket to addr inside the namespace.
func (b *Broker) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	return brokerSocket(b, brokerListen, "udp", addr, func(f *os.File) (*net.UDPConn, error) {
		c, err := net.FilePacketConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UDPConn), nil
	})
}

// ListenTCP listens on addr inside the namespace.
func (b *Broker) ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	return brokerSocket(b, brokerListen, "tcp", addr, func(f *os.File) (*net.TCPListener, error) {
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, err
		}
		return ln.(*net.TCPListener), nil
	})
}

// brokerSocket makes one socket through b and wraps it (the wrappers dup
// the fd, so the file is closed here).
func brokerSocket[T any](b *Broker, op uint8, network string, addr netip.AddrPort, wrap func(*os.File) (T, error)) (T, error) {
	f, err := b.request(op, network, addr)
	if err != nil {
		var zero T
		return zero, err
	}
	defer f.Close()
	return wrap(f)
}
