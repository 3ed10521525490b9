package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram is the largest UDP payload (IPv4: 65535-20-8).
const maxDatagram = 65535

// udpRcvBuf is the receive buffer of each forwarded flow's gVisor endpoint
// (gVisor's default is 32 KiB). Memory is only used while datagrams queue.
const udpRcvBuf = 1 << 20

var datagramPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// handleUDP is the udp.Forwarder handler. gVisor calls it synchronously on
// the inbound path for a datagram that no endpoint claimed, that is, the
// first datagram of a new flow (src ip:port, dst ip:port). It creates a
// connected gVisor endpoint for the flow, which then receives the flow's
// later datagrams through gVisor's demultiplexer, and starts the flow's
// goroutines. It returns true ("handled") for everything, so that gVisor
// never answers with ICMP port unreachable on our behalf.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	hostDst, v := s.route(dst)
	if v != forward {
		return true // drop: reject, silent, and unreachable (already sent by the link filter)
	}
	if !s.flows.enter() {
		return true
	}
	var wq waiter.Queue
	ep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		// A concurrent first datagram of the same flow registered it.
		s.flows.leave()
		return true
	}
	// gVisor gives a UDP endpoint a 32 KiB receive buffer (~23 datagrams
	// of 1400 bytes): a burst from the guest overflows it before the
	// flow's goroutine is scheduled, and the rest is dropped silently.
	// Measured (iperf3 -u -l 1400 ns→host, MTU 65520, 3 s, 2 runs each):
	// gVisor UDP ReceiveBufferErrors ~400k → ~90k with 1 MiB, delivered
	// 0.28 → 0.39 Gbit/s at -b 1G and 0.26 → 0.34 unlimited.
	ep.SocketOptions().SetReceiveBufferSize(udpRcvBuf, true)
	guest := gonet.NewUDPConn(&wq, ep)
	idle := s.cfg.udpIdle
	if dst.Port() == 53 {
		idle = s.cfg.dnsIdle
	}
	go func() {
		defer s.flows.leave()
		s.serveUDP(guest, dst, hostDst, idle)
	}()
	return true
}

// maxOtherSources bounds the other host addresses (address:port) whose
// datagrams one flow passes to the guest (see serveUDP); more are dropped.
// A TFTP or STUN exchange needs one or two.
const maxOtherSources = 16

// serveUDP relays one flow between the guest endpoint and its host socket
// until it has been idle (no datagram either way) for idle, or the stack
// shuts down. Datagrams from the flow's destination reach the guest from
// the original destination address, the local address of the guest
// endpoint.
//
// The host socket is not connected, as slirp4netns's is not: datagrams
// from other addresses or ports of the host's network reach the guest as
// well (a TFTP server answers from a new port, a STUN server or a peer
// from another address), from the address the guest would use to reach
// them (the host's loopback as the gateway), each through a gVisor
// endpoint of its own, which also carries the guest's answers back out
// through the same host socket, so the peer sees one address and port.
func (s *Stack) serveUDP(guest *gonet.UDPConn, dst, hostDst netip.AddrPort, idle time.Duration) {
	defer guest.Close()
	host, err := s.openHostUDP(s.ctx, hostDst)
	if err != nil {
		if s.ctx.Err() == nil {
			s.logf("stack: udp %v → %v: %v", guest.RemoteAddr(), hostDst, err)
		}
		return
	}
	defer host.Close()
	guestSrc, _ := netip.ParseAddrPort(guest.RemoteAddr().String())

	var (
		wg     sync.WaitGroup
		once   sync.Once
		mu     sync.Mutex
		closed bool                            // +checklocks:mu
		fast   udpFastKey                      // +checklocks:mu; registered when valid
		others = map[netip.AddrPort]net.Conn{} // +checklocks:mu; host address → its guest endpoint
	)
	closeAll := func() {
		once.Do(func() {
			mu.Lock()
			closed = true
			if fast.src.IsValid() {
				s.udpFast.remove(fast)
			}
			for _, c := range others {
				c.Close()
			}
			mu.Unlock()
			guest.Close()
			host.Close()
		})
	}
	stop := context.AfterFunc(s.ctx, closeAll)
	defer stop()
	timer := time.AfterFunc(idle, closeAll)
	defer timer.Stop()
	extend := func() { timer.Reset(idle) }

	// From now on the link filter writes this flow's datagrams to host
	// itself (udpfast.go); those that reach the gVisor endpoint anyway
	// (queued before, or not taken by the fast path) are relayed below.
	if k, f, ok := udpFastFlowOf(guest, host, extend); ok {
		mu.Lock()
		if !closed {
			fast = k
			s.udpFast.add(k, f)
		}
		mu.Unlock()
	}

	// other returns the guest endpoint for datagrams from the host address
	// from, making it (and its goroutine for the guest's answers) on first
	// use; nil drops the datagram.
	other := func(from netip.AddrPort) net.Conn {
		mu.Lock()
		defer mu.Unlock()
		if c, ok := others[from]; ok || closed || len(others) >= maxOtherSources {
			return c
		}
		src, ok := s.guestVisibleSource(from, dst, hostDst)
		if !ok {
			return nil
		}
		c, err := s.dialUDP(src, guestSrc, true)
		if err != nil {
			return nil // e.g. the guest has a flow of its own to src
		}
		others[from] = c
		wg.Go(func() {
			relayDatagrams(c, func(b []byte) { host.write(b, from) }, extend)
		})
		return c
	}

	wg.Go(func() {
		defer closeAll()
		bp := datagramPool.Get().(*[]byte)
		defer datagramPool.Put(bp)
		buf := *bp
		for {
			n, from, err := host.read(buf)
			if err != nil {
				if !isICMPError(err) {
					return
				}
				for _, e := range host.icmpErrors() {
					visible := dst
					if e.dst != hostDst {
						var ok bool
						if visible, ok = s.guestVisibleSource(e.dst, dst, hostDst); !ok {
							continue
						}
					}
					s.relayICMPError(e, guestSrc, visible)
				}
				continue
			}
			extend()
			if from == hostDst {
				guest.Write(buf[:n])
			} else if c := other(from); c != nil {
				c.Write(buf[:n])
			}
		}
	})
	relayDatagrams(guest, func(b []byte) { host.write(b, hostDst) }, extend)
	closeAll()
	wg.Wait()
}

// guestVisibleSource is the address the guest sees a datagram from the
// host address from come from, in a flow to dst (hostDst on the host):
// the flow's destination itself for its own host address (the gateway for
// the host's loopback), else from unchanged if the guest could reach it
// directly; false (drop) for anything else: another loopback address, our
// own or the virtual network's addresses, the other address family.
func (s *Stack) guestVisibleSource(from, dst, hostDst netip.AddrPort) (netip.AddrPort, bool) {
	a := from.Addr().Unmap()
	if a == hostDst.Addr() {
		return netip.AddrPortFrom(dst.Addr(), from.Port()), true
	}
	if a.Is4() != dst.Addr().Is4() || s.isOwn(a) {
		return netip.AddrPort{}, false
	}
	if to, v := s.route(netip.AddrPortFrom(a, from.Port())); v != forward || to.Addr() != a {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, from.Port()), true
}

// relayDatagrams reads datagrams from src and hands them to send until src
// fails (closed). Errors of one datagram do not end the flow: a connected
// socket (the endpoints of other sources, a test's dialer) reports an
// earlier ICMP error (ECONNREFUSED) on its next operation, and the next
// datagram may well get through.
func relayDatagrams(src net.Conn, send func([]byte), extend func()) {
	bp := datagramPool.Get().(*[]byte)
	defer datagramPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			return
		}
		extend()
		send(buf[:n])
	}
}

// udpHost is a flow's host socket: not connected when we open it (replies
// from any address reach the flow), connected when a test's dialer makes
// it (Config.dial), in which case everything read is from dst.
type udpHost struct {
	pc  *net.UDPConn    // not connected, with IP_RECVERR; or nil
	rc  syscall.RawConn // pc's
	c   net.Conn        // connected; when pc is nil
	dst netip.AddrPort
}

// icmpErrors returns the ICMP errors queued for the socket (see udperr.go).
func (h *udpHost) icmpErrors() []icmpError {
	if h.pc == nil {
		return nil
	}
	var errs []icmpError
	h.rc.Control(func(fd uintptr) { errs = readErrQueue(int(fd)) })
	return errs
}

func (h *udpHost) read(b []byte) (int, netip.AddrPort, error) {
	if h.pc == nil {
		n, err := h.c.Read(b)
		return n, h.dst, err
	}
	n, from, err := h.pc.ReadFromUDPAddrPort(b)
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
}

// write sends one datagram to to; errors cost this datagram only.
func (h *udpHost) write(b []byte, to netip.AddrPort) {
	if h.pc == nil {
		if to == h.dst {
			h.c.Write(b)
		}
		return
	}
	h.pc.WriteToUDPAddrPort(b, to)
}

func (h *udpHost) Close() error {
	if h.pc == nil {
		return h.c.Close()
	}
	return h.pc.Close()
}
