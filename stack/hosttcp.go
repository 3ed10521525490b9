package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The host side of a guest's TCP connection is a socket made, bound and
// connected here, not by net.Dialer: a connect/request/close load spends
// a large part of its CPU in the dial, and the Dialer's path asks the
// kernel for what we already know (getsockname, getpeername) and parks the
// goroutine until Go's poller reports the connect done, even when, as on
// loopback, connect(2) has completed the handshake before it returns.

// Keepalive of host sockets, as net.Dialer's default: the guest's own
// keepalive probes end at gVisor, which answers them, so only the host
// socket's find a host peer that vanished without a word; the relay then
// resets the guest's connection.
const (
	hostKeepIdle     = 15 * time.Second
	hostKeepInterval = 15 * time.Second
	hostKeepCount    = 9
)

// dialTCP connects a new host socket to dst, bound to local (without a
// port: IP_BIND_ADDRESS_NO_PORT) when it is valid, else with the address
// and port left to connect(2), which lets connections to different
// destinations share a port (TestDialHostSharesEphemeralPorts). Errors
// wrap connect's errno.
func dialTCP(ctx context.Context, dst netip.AddrPort, local netip.Addr) (*hostTCP, error) {
	family := unix.AF_INET
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: err}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr(os.NewSyscallError("socket", err))
	}
	if err := setupHostTCP(fd, local); err != nil {
		unix.Close(fd)
		return nil, opErr(err)
	}
	err = unix.Connect(fd, sockaddrOf(dst))
	connected := err == nil
	switch err {
	case nil, unix.EINPROGRESS, unix.EINTR:
	default:
		unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	if !connected {
		// On loopback the handshake is usually over when connect(2)
		// returns: no wait then.
		// syscall's, not unix's: unix.Getpeername asks for the
		// socket's protocol too.
		_, perr := syscall.Getpeername(fd)
		connected = perr == nil
	}
	// Non-blocking: os registers it with Go's poller.
	f := os.NewFile(uintptr(fd), "tcp")
	c := &hostTCP{f: f, remote: dst}
	if c.rc, err = f.SyscallConn(); err != nil {
		f.Close()
		return nil, opErr(err)
	}
	if !connected {
		if err := c.waitConnected(ctx); err != nil {
			f.Close()
			return nil, opErr(err)
		}
	}
	return c, nil
}

// setupHostTCP sets a new host socket's options and binds it to local if
// valid.
func setupHostTCP(fd int, local netip.Addr) error {
	for _, o := range []struct {
		level, opt, val int
		name            string
	}{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(hostKeepIdle / time.Second), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(hostKeepInterval / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, hostKeepCount, "TCP_KEEPCNT"},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return fmt.Errorf("setsockopt %s: %w", o.name, err)
		}
	}
	if !local.IsValid() {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		return fmt.Errorf("setsockopt IP_BIND_ADDRESS_NO_PORT: %w", err)
	}
	if err := unix.Bind(fd, sockaddrOf(netip.AddrPortFrom(local, 0))); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
}

func sockaddrOf(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// waitConnected waits for a connect(2) under way to end, or ctx (its
// deadline included: ctx's error, not a deadline's).
func (c *hostTCP) waitConnected(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { c.f.SetWriteDeadline(time.Unix(1, 0)) })
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			serr = os.NewSyscallError("getsockopt", err)
			return true
		case n != 0:
			serr = os.NewSyscallError("connect", syscall.Errno(n))
			return true
		}
		// Woken spuriously, the poller finds SO_ERROR 0 and no peer yet.
		_, err = syscall.Getpeername(int(fd))
		return err == nil
	})
	if !stop() {
		// ctx ended, and its hook has set, or will set, a deadline
		// that would fail the socket's writes.
		return ctx.Err()
	}
	switch {
	case serr != nil:
		return serr
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	}
	return err
}

// hostTCP is a connected host TCP socket: a net.Conn on an *os.File, so
// that reads and writes wait through Go's poller.
type hostTCP struct {
	f      *os.File
	rc     syscall.RawConn
	remote netip.AddrPort
}

func (c *hostTCP) Read(p []byte) (int, error)         { return c.f.Read(p) }
func (c *hostTCP) Write(p []byte) (int, error)        { return c.f.Write(p) }
func (c *hostTCP) Close() error                       { return c.f.Close() }
func (c *hostTCP) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *hostTCP) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *hostTCP) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }
func (c *hostTCP) SyscallConn() (syscall.RawConn, error) {
	return c.rc, nil
}
func (c *hostTCP) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// LocalAddr asks the kernel: only logs and tests want it.
func (c *hostTCP) LocalAddr() net.Addr {
	var sa unix.Sockaddr
	c.rc.Control(func(fd uintptr) { sa, _ = unix.Getsockname(int(fd)) })
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)))
	case *unix.SockaddrInet6:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)))
	}
	return &net.TCPAddr{}
}

// CloseWrite shuts the socket down for writing: a FIN to the host peer.
func (c *hostTCP) CloseWrite() error {
	return c.control("shutdown", func(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) })
}

// SetLinger sets SO_LINGER, as *net.TCPConn's: 0 makes Close send a RST.
func (c *hostTCP) SetLinger(sec int) error {
	l := unix.Linger{}
	if sec >= 0 {
		l = unix.Linger{Onoff: 1, Linger: int32(sec)}
	}
	return c.control("setsockopt", func(fd int) error { return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &l) })
}

func (c *hostTCP) control(op string, f func(fd int) error) error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = f(int(fd)) }); err != nil {
		return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
	}
	if serr != nil {
		return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, serr)}
	}
	return nil
}
