package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Dialing into the namespace (host → namespace port forwarding). The
// connection starts from our stack with a spoofed source address, src,
// which the guest sees as its peer: the real client's address, or the
// gateway. The guest's replies come back to us whatever src is: the
// gateway is ours, and any other address is off-link for the guest, which
// sends to its default router, us. Our NIC is promiscuous, and gVisor's
// demultiplexer gives a packet to the endpoint registered for its exact
// 4-tuple before the forwarders see it, so the SYN-ACK (or the reply
// datagram) reaches the dialed endpoint, never tcp/udp.Forwarder.

// errShutDown is returned by dials once the Stack is shutting down.
var errShutDown = errors.New("stack: shut down")

// DialTCP opens a TCP connection from src to dst inside the virtual
// network, as if src had connected to dst: the guest's accepted connection
// sees src as its remote address. src must be the gateway (the plan's
// Gateway4 or Gateway6), the DNS address, or an address outside the
// virtual network (a real client's); an invalid or unspecified src address
// means the gateway. If src's port is 0 or in use, an ephemeral port is
// used. dst must be a guest address of the virtual network (not ours), of
// the same family as src.
//
// The dial ends with ctx, and with the Stack's shutdown. The returned
// *gonet.TCPConn wrapper honours deadlines and CloseWrite, and has an
// Abort method (relay.Aborter) that closes it with RST; it is closed
// (with RST) when Run returns, if the caller has not closed it before. A
// refused connection returns an error that matches syscall.ECONNREFUSED
// under errors.Is.
func (s *Stack) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	growStack() // the caller's goroutine goes through gVisor's connect (tcp.go)
	src, err := s.checkDial("tcp", src, dst)
	if err != nil {
		return nil, err
	}
	if !s.flows.enter() {
		return nil, dialError("tcp", src, dst, errShutDown)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	s.resolveFromOwn(dst.Addr())
	ep, wq, err := s.connectTCP(ctx, src, dst)
	if err == nil {
		err = ctx.Err() // cancelled just as the handshake finished
		if err != nil {
			ep.Abort()
			ep.Close()
		}
	}
	if err != nil {
		s.flows.leave()
		if s.ctx.Err() != nil && ctx.Err() != nil {
			err = errShutDown
		}
		return nil, dialError("tcp", src, dst, err)
	}
	c := &dialedTCP{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, readNotify: newReadNotify(ep, wq), leave: s.flows.leave}
	c.stop = context.AfterFunc(s.ctx, func() { c.close(true) })
	return c, nil
}

// connectTCP creates, binds and connects the endpoint, retrying with an
// ephemeral port when src's port is taken.
func (s *Stack) connectTCP(ctx context.Context, src, dst netip.AddrPort) (tcpip.Endpoint, *waiter.Queue, error) {
	for {
		wq := new(waiter.Queue)
		ep, err := s.newEndpoint(tcp.ProtocolNumber, src.Addr(), wq)
		if err != nil {
			return nil, nil, err
		}
		we, ready := waiter.NewChannelEntry(waiter.WritableEvents)
		wq.EventRegister(&we)
		terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(src.Addr()), Port: src.Port()})
		if terr == nil {
			terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()})
			if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
				select {
				case <-ready:
					terr = ep.LastError()
				case <-ctx.Done():
					wq.EventUnregister(&we)
					ep.Abort()
					ep.Close()
					return nil, nil, ctx.Err()
				}
			}
		}
		wq.EventUnregister(&we)
		if terr == nil {
			return ep, wq, nil
		}
		ep.Close()
		if portTaken(terr) && src.Port() != 0 {
			src = netip.AddrPortFrom(src.Addr(), 0)
			continue
		}
		return nil, nil, tcpipError(terr)
	}
}

// DialUDP returns a connected datagram conn from src to dst inside the
// virtual network; src and dst are as for DialTCP. Reads return the
// datagrams dst sends to src. The conn is closed when Run returns, if the
// caller has not closed it before.
//
// An ICMP port unreachable from the guest makes one Read or Write fail
// with an error matching syscall.ECONNREFUSED; the conn stays usable. It
// reaches the conn only when src is one of our own addresses (the
// gateway): the link filter drops ICMP to foreign ones.
func (s *Stack) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	return s.dialUDP(src, dst, false)
}

// dialUDP is DialUDP; with exactSrc a source port that is taken is an
// error instead of a reason to pick another one.
func (s *Stack) dialUDP(src, dst netip.AddrPort, exactSrc bool) (net.Conn, error) {
	if !s.flows.enter() {
		return nil, dialError("udp", src, dst, errShutDown)
	}
	ep, wq, err := s.bindUDP(src, dst, exactSrc)
	if err != nil {
		s.flows.leave()
		return nil, err
	}
	rep := &refusalEndpoint{Endpoint: ep}
	c := &dialedUDP{UDPConn: gonet.NewUDPConn(wq, rep), ep: rep, leave: s.flows.leave}
	// gVisor signals an ICMP error with EventErr, which a Read
	// blocked in gonet (waiting for ReadableEvents only) does not
	// see until the next datagram. Turn it into a readable event;
	// the Read then finds the error. Not from inside the callback:
	// Notify holds the queue's lock.
	c.errEntry = waiter.NewFunctionEntry(waiter.EventErr, func(waiter.EventMask) {
		s.flows.goFunc(func() { wq.Notify(waiter.ReadableEvents) })
	})
	wq.EventRegister(&c.errEntry)
	c.stop = context.AfterFunc(s.ctx, func() { c.close(false) })
	return c, nil
}

// bindUDP makes a gVisor UDP endpoint bound to src (see dialUDP for
// exactSrc) and connected to dst.
func (s *Stack) bindUDP(src, dst netip.AddrPort, exactSrc bool) (tcpip.Endpoint, *waiter.Queue, error) {
	src, err := s.checkDial("udp", src, dst)
	if err != nil {
		return nil, nil, err
	}
	s.resolveFromOwn(dst.Addr())
	for {
		wq := new(waiter.Queue)
		ep, err := s.newEndpoint(udp.ProtocolNumber, src.Addr(), wq)
		if err != nil {
			return nil, nil, dialError("udp", src, dst, err)
		}
		terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(src.Addr()), Port: src.Port()})
		if terr == nil {
			terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()})
		}
		if terr != nil {
			ep.Close()
			if portTaken(terr) && src.Port() != 0 && !exactSrc {
				src = netip.AddrPortFrom(src.Addr(), 0)
				continue
			}
			return nil, nil, dialError("udp", src, dst, tcpipError(terr))
		}
		return ep, wq, nil
	}
}

// checkDial validates a dial and returns src with the default filled in.
func (s *Stack) checkDial(network string, src, dst netip.AddrPort) (netip.AddrPort, error) {
	d := dst.Addr().Unmap()
	dst = netip.AddrPortFrom(d, dst.Port())
	plan := &s.cfg.Plan
	switch {
	case !plan.Contains(d), s.isOwn(d), dst.Port() == 0,
		d.Is4() && (d == plan.Net4.Addr() || d == plan.Broadcast4()):
		return src, dialError(network, src, dst, fmt.Errorf("stack: %v is not a guest address of the virtual network", dst))
	}
	a := src.Addr().Unmap()
	if !a.IsValid() || a.IsUnspecified() {
		a = plan.Gateway4
		if d.Is6() {
			a = plan.Gateway6
		}
	}
	src = netip.AddrPortFrom(a, src.Port())
	switch {
	case a.Is4() != d.Is4():
		return src, dialError(network, src, dst, errors.New("stack: source and destination are of different families"))
	case s.isOwn(a):
	case plan.Virtual(a):
		// The guest would look for it on the link, where the link
		// filter keeps it from finding anyone (on a mirrored network,
		// only the guest's own addresses: the stack answers for the
		// other hosts).
		return src, dialError(network, src, dst, errors.New("stack: source is a guest address of the virtual network"))
	case a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		// Loopback and link-local sources mean nothing to the guest
		// (portfwd maps loopback clients to the gateway).
		return src, dialError(network, src, dst, errors.New("stack: source address cannot appear in the namespace"))
	}
	return src, nil
}

// newEndpoint creates a TCP or UDP endpoint for local address a. IPv6
// endpoints are v6-only: they must never register for IPv4 as well.
func (s *Stack) newEndpoint(proto tcpip.TransportProtocolNumber, a netip.Addr, wq *waiter.Queue) (tcpip.Endpoint, error) {
	ep, err := s.gv.NewEndpoint(proto, protoOf(a), wq)
	if err != nil {
		return nil, tcpipError(err)
	}
	if a.Is6() {
		ep.SocketOptions().SetV6Only(true)
	}
	return ep, nil
}

// resolveFromOwn starts link address resolution of dst from our own
// address, if it is not resolved yet. Otherwise the first packet's
// (spoofed) source would be the ARP request's sender address, and a guest
// that filters ARP by sender (rp_filter, arp_filter) might not answer.
func (s *Stack) resolveFromOwn(dst netip.Addr) {
	local, proto := s.cfg.Plan.Gateway4, header.IPv4ProtocolNumber
	if dst.Is6() {
		local, proto = s.cfg.Plan.Gateway6, header.IPv6ProtocolNumber
	}
	// ErrWouldBlock (resolution started) and success are both fine; the
	// connect that follows waits on the same neighbor entry.
	_ = s.gv.GetLinkAddress(nicID, tcpipAddr(dst), tcpipAddr(local), proto, nil)
}

// portTaken reports whether a bind or connect failed because the port, or
// the whole 4-tuple, is in use.
func portTaken(err tcpip.Error) bool {
	switch err.(type) {
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress, *tcpip.ErrAlreadyBound:
		return true
	}
	return false
}

// tcpipError converts a gVisor error at the stack boundary, to an errno
// where one matches, so that callers can use errors.Is.
func tcpipError(err tcpip.Error) error {
	var errno syscall.Errno
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		errno = syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		errno = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		errno = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		errno = syscall.ETIMEDOUT
	case *tcpip.ErrHostUnreachable:
		errno = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		errno = syscall.ENETUNREACH
	case *tcpip.ErrPortInUse:
		errno = syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		errno = syscall.EADDRNOTAVAIL
	default:
		return errors.New(err.String())
	}
	return os.NewSyscallError("connect", errno)
}

func dialError(network string, src, dst netip.AddrPort, err error) error {
	var srcA, dstA net.Addr
	if network == "tcp" {
		srcA, dstA = net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst)
	} else {
		srcA, dstA = net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst)
	}
	return &net.OpError{Op: "dial", Net: network, Source: srcA, Addr: dstA, Err: err}
}

// dialedTCP is a connection made by DialTCP: a member of s.flows until
// closed, by the caller or by the Stack's shutdown.
type dialedTCP struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	*readNotify
	stop  func() bool // stops the shutdown hook
	leave func()
	once  sync.Once
}

// Close implements net.Conn: FIN to the guest.
func (c *dialedTCP) Close() error {
	c.stop()
	c.close(false)
	return nil
}

var (
	_ relay.Aborter      = (*dialedTCP)(nil)
	_ relay.DeepWriter   = (*dialedTCP)(nil)
	_ relay.ReadNotifier = (*dialedTCP)(nil)
)

// GrowStack implements relay.DeepWriter (tcp.go).
func (c *dialedTCP) GrowStack() { growStack() }

// Abort implements relay.Aborter: RST to the guest, so that a port
// forward's client that reset (or failed) does not look to the guest like
// one that finished.
func (c *dialedTCP) Abort() {
	c.stop()
	c.close(true)
}

// close closes the connection once, with RST if abort (by the caller, or
// the Stack shutting down, as for the forwarder's flows), and leaves
// s.flows.
func (c *dialedTCP) close(abort bool) {
	c.once.Do(func() {
		if abort {
			c.ep.Abort()
		}
		c.TCPConn.Close()
		c.leave()
	})
}

// dialedUDP is a conn made by DialUDP, as dialedTCP.
type dialedUDP struct {
	*gonet.UDPConn
	ep       *refusalEndpoint
	errEntry waiter.Entry
	stop     func() bool
	leave    func()
	once     sync.Once
}

// Close implements net.Conn.
func (c *dialedUDP) Close() error {
	c.close(true)
	return nil
}

func (c *dialedUDP) close(byCaller bool) {
	c.once.Do(func() {
		if byCaller {
			c.stop()
		}
		c.UDPConn.Close()
		c.leave()
	})
}

// Read implements net.Conn.
func (c *dialedUDP) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	return n, c.ep.refusal(&c.ep.readRefused, "read", err)
}

// Write implements net.Conn.
func (c *dialedUDP) Write(b []byte) (int, error) {
	n, err := c.UDPConn.Write(b)
	return n, c.ep.refusal(&c.ep.writeRefused, "write", err)
}

// refusalEndpoint notes when the endpoint reports an ICMP port unreachable
// (ErrConnectionRefused), which gonet turns into an error with the text
// only, so that dialedUDP can return an error callers can match with
// errors.Is(err, syscall.ECONNREFUSED), as with a host socket.
type refusalEndpoint struct {
	tcpip.Endpoint
	readRefused, writeRefused atomic.Bool
}

// Read implements tcpip.Endpoint.
func (e *refusalEndpoint) Read(w io.Writer, opts tcpip.ReadOptions) (tcpip.ReadResult, tcpip.Error) {
	res, err := e.Endpoint.Read(w, opts)
	if _, ok := err.(*tcpip.ErrConnectionRefused); ok {
		e.readRefused.Store(true)
	}
	return res, err
}

// Write implements tcpip.Endpoint.
func (e *refusalEndpoint) Write(p tcpip.Payloader, opts tcpip.WriteOptions) (int64, tcpip.Error) {
	n, err := e.Endpoint.Write(p, opts)
	if _, ok := err.(*tcpip.ErrConnectionRefused); ok {
		e.writeRefused.Store(true)
	}
	return n, err
}

// refusal replaces err by ECONNREFUSED if the endpoint call behind it was
// refused (reads and writes are each serialised by their callers' use of
// a conn; a concurrent reader and writer use separate flags).
func (e *refusalEndpoint) refusal(flag *atomic.Bool, op string, err error) error {
	if err == nil || !flag.Swap(false) {
		return err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		oe.Err = os.NewSyscallError(op, syscall.ECONNREFUSED)
		return oe
	}
	return os.NewSyscallError(op, syscall.ECONNREFUSED)
}
