package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/usernet/usernet/policy"
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
	if denied, _ := s.egressDenied(policy.UDP, hostDst); denied {
		s.prohibitUDP(netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort), dst)
		return true
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
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	go func() {
		defer s.flows.leave()
		to, err := s.toHost(s.ctx, "udp", hostDst)
		var port *udpPort
		if err == nil {
			port, err = s.acquireUDPPort(src, hostDst)
		}
		if err != nil {
			guest.Close()
			if s.ctx.Err() == nil {
				s.logf("stack: udp %v → %v: %v", src, hostDst, err)
			}
			return
		}
		s.serveUDPFlow(port, guest, dst, to, idle)
	}()
	return true
}

// maxHostFirstFlows bounds the flows one guest UDP port gets from the host
// side (datagrams from addresses the guest has not sent to); more are
// dropped. A TFTP or STUN exchange needs one or two.
const maxHostFirstFlows = 16

// UDP, host side. Each guest UDP port (address:port) has one host socket,
// not connected, that all its flows share (udpPort): the host's network
// sees the guest's port as one address and port whatever the destination,
// and a datagram from any address reaches the guest (endpoint-independent
// mapping and filtering, RFC 4787; slirp4netns's sockets behave the same).
// A flow is one guest port and one remote: a gVisor endpoint for the guest
// side, made by the forwarder for the guest's first datagram (handleUDP)
// or, for a datagram from a remote the guest has not written to, by the
// port's reader (a TFTP server answering from a new port, a STUN or
// peer-to-peer peer), from the address the guest would use to reach it.

// udpPortKey names a guest UDP port's host socket. Flows to the host's
// loopback (the gateway) get a socket of their own on the loopback address,
// so that --outbound-addr never applies to them and only local processes
// can reach it.
type udpPortKey struct {
	src      netip.AddrPort
	loopback bool
}

// udpPort is the host socket of one guest UDP port and its flows. Its
// reader goroutine dispatches what the socket receives; the last flow to
// end closes the socket, which ends the reader.
type udpPort struct {
	key  udpPortKey
	host *udpHost
	refs int // flows; guarded by Stack.udpPortsMu

	mu        sync.Mutex
	flows     map[netip.AddrPort]*udpFlow // by host address; guarded by mu
	hostFirst int                         // flows made by the reader; guarded by mu
}

// udpFlow is one flow of a udpPort.
type udpFlow struct {
	guest   net.Conn       // the gVisor endpoint: local visible, remote the guest port
	visible netip.AddrPort // the remote as the guest sees it
	extend  func()         // the flow's idle timer: traffic seen
	stop    func()         // the flow's idle timer: the flow has ended
	fast    udpFastKey     // in s.udpFast with fastF
	fastF   *udpFastFlow
	// hostFirst: made by the port's reader, counted in udpPort.hostFirst.
	hostFirst bool
}

// acquireUDPPort returns the host socket of guest port src for loopback or
// other destinations, opening it (and starting its reader) for the first
// flow; each call must be paired with releaseUDPPort.
func (s *Stack) acquireUDPPort(src, hostDst netip.AddrPort) (*udpPort, error) {
	k := udpPortKey{src: src, loopback: hostDst.Addr().IsLoopback()}
	s.udpPortsMu.Lock()
	defer s.udpPortsMu.Unlock()
	if p := s.udpPorts[k]; p != nil {
		p.refs++
		return p, nil
	}
	host, err := s.openHostUDP(k)
	if err != nil {
		return nil, err
	}
	p := &udpPort{key: k, host: host, refs: 1, flows: map[netip.AddrPort]*udpFlow{}}
	if !s.flows.goFunc(func() { s.readUDPPort(p) }) {
		host.Close()
		return nil, errShutDown
	}
	s.udpPorts[k] = p
	return p, nil
}

func (s *Stack) releaseUDPPort(p *udpPort) {
	s.udpPortsMu.Lock()
	defer s.udpPortsMu.Unlock()
	if p.refs--; p.refs == 0 {
		if s.udpPorts[p.key] == p {
			delete(s.udpPorts, p.key)
		}
		p.host.Close()
	}
}

// readUDPPort reads the port's host socket until it is closed and hands
// each datagram to the flow of its sender, making a flow for a new sender.
func (s *Stack) readUDPPort(p *udpPort) {
	bp := datagramPool.Get().(*[]byte)
	defer datagramPool.Put(bp)
	buf := *bp
	for {
		n, from, err := p.host.read(buf)
		if err != nil {
			if !isICMPError(err) {
				return
			}
			for _, e := range p.host.icmpErrors() {
				p.mu.Lock()
				f := p.flows[e.dst]
				p.mu.Unlock()
				if f != nil {
					s.relayICMPError(e, p.key.src, f.visible)
				}
			}
			continue
		}
		p.mu.Lock()
		f := p.flows[from]
		p.mu.Unlock()
		if f == nil {
			f = s.hostFirstFlow(p, from)
		}
		if f != nil {
			f.extend()
			f.guest.Write(buf[:n])
		}
	}
}

// hostFirstFlow makes the flow for a datagram from a remote the guest has
// not written to from this port; nil drops the datagram.
func (s *Stack) hostFirstFlow(p *udpPort, from netip.AddrPort) *udpFlow {
	visible, ok := s.guestVisible(s.fromHost(from), p.key.src.Addr().Is6())
	if !ok {
		return nil
	}
	p.mu.Lock()
	full := p.hostFirst >= maxHostFirstFlows
	if !full {
		p.hostFirst++ // only this goroutine makes such flows
	}
	p.mu.Unlock()
	if full {
		return nil
	}
	c, err := s.dialUDP(visible, p.key.src, true)
	if err == nil {
		s.udpPortsMu.Lock()
		if p.refs == 0 {
			// The port's last flow ended after this datagram came
			// in: the socket is closed, the datagram too late.
			err = errShutDown
		} else {
			p.refs++
		}
		s.udpPortsMu.Unlock()
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		p.mu.Lock()
		p.hostFirst--
		p.mu.Unlock()
		return nil // e.g. shutting down
	}
	f := s.startUDPFlow(p, c, visible, from, s.cfg.udpIdle, true)
	if !s.flows.goFunc(func() { s.runUDPFlow(p, f, from) }) {
		c.Close()
		s.endUDPFlow(p, f, from)
		return nil
	}
	return f
}

// serveUDPFlow runs a flow the guest started (handleUDP). hostDst, here
// and below, is the address the port's host socket sends the flow's
// datagrams to, and receives its replies from.
func (s *Stack) serveUDPFlow(p *udpPort, guest net.Conn, dst, hostDst netip.AddrPort, idle time.Duration) {
	f := s.startUDPFlow(p, guest, dst, hostDst, idle, false)
	s.runUDPFlow(p, f, hostDst)
}

// startUDPFlow registers a flow with its port (and the fast path) and
// arms its idle timer, which closes the guest endpoint.
func (s *Stack) startUDPFlow(p *udpPort, guest net.Conn, visible, hostDst netip.AddrPort, idle time.Duration, hostFirst bool) *udpFlow {
	timer := time.AfterFunc(idle, func() { guest.Close() })
	f := &udpFlow{guest: guest, visible: visible, extend: func() { timer.Reset(idle) }, stop: func() { timer.Stop() }, hostFirst: hostFirst}
	p.mu.Lock()
	p.flows[hostDst] = f
	p.mu.Unlock()
	// From now on the link filter writes this flow's datagrams to the
	// host itself (udpfast.go); those that reach the gVisor endpoint
	// anyway (queued before, or not taken by the fast path) are relayed
	// by runUDPFlow.
	// The key is what the link filter sees on the wire: the guest port
	// and the remote as the guest addresses it (both plain, unmapped).
	f.fast, f.fastF = udpFastKey{src: p.key.src, dst: visible}, udpFastFlowOf(p.host, hostDst, f.extend)
	s.udpFast.add(f.fast, f.fastF)
	return f
}

// runUDPFlow relays the guest's datagrams of a flow to the host until the
// guest endpoint is closed (idle, or the stack shuts down), then ends it.
func (s *Stack) runUDPFlow(p *udpPort, f *udpFlow, hostDst netip.AddrPort) {
	stop := context.AfterFunc(s.ctx, func() { f.guest.Close() })
	defer stop()
	relayDatagrams(f.guest, func(b []byte) { p.host.write(b, hostDst) }, f.extend)
	f.guest.Close()
	s.endUDPFlow(p, f, hostDst)
}

func (s *Stack) endUDPFlow(p *udpPort, f *udpFlow, hostDst netip.AddrPort) {
	f.stop()
	s.udpFast.remove(f.fast, f.fastF)
	p.mu.Lock()
	if p.flows[hostDst] == f {
		delete(p.flows, hostDst)
	}
	if f.hostFirst {
		p.hostFirst--
	}
	p.mu.Unlock()
	s.releaseUDPPort(p)
}

// guestVisible is the address the guest sees a datagram from the host
// address from come from: the plan's host-loopback address for the host's
// loopback (if the plan maps it), else from itself if the guest could reach
// it directly; false (drop) for anything else: other loopback addresses,
// our own or the virtual network's addresses, the other address family.
func (s *Stack) guestVisible(from netip.AddrPort, v6 bool) (netip.AddrPort, bool) {
	a := from.Addr().Unmap()
	if a.Is6() != v6 {
		return netip.AddrPort{}, false
	}
	switch {
	case a == hostLoopback4 && s.cfg.Plan.HostLoopback4.IsValid():
		return netip.AddrPortFrom(s.cfg.Plan.HostLoopback4, from.Port()), true
	case a == hostLoopback6 && s.cfg.Plan.HostLoopback6.IsValid():
		return netip.AddrPortFrom(s.cfg.Plan.HostLoopback6, from.Port()), true
	case s.isOwn(a):
		return netip.AddrPort{}, false
	}
	if to, v := s.route(netip.AddrPortFrom(a, from.Port())); v != forward || to.Addr() != a {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, from.Port()), true
}

// relayDatagrams reads datagrams from src and hands them to send until src
// fails (closed). Errors of one datagram do not end the flow: a connected
// endpoint reports an earlier ICMP error (ECONNREFUSED) on its next
// operation, and the next datagram may well get through.
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

// udpHost is a guest port's host socket: not connected, so that replies
// from any address reach the port's flows.
type udpHost struct {
	pc *net.UDPConn    // with IP_RECVERR
	rc syscall.RawConn // pc's
}

// icmpErrors returns the ICMP errors queued for the socket (see udperr.go).
func (h *udpHost) icmpErrors() []icmpError {
	var errs []icmpError
	h.rc.Control(func(fd uintptr) { errs = readErrQueue(int(fd)) })
	return errs
}

func (h *udpHost) read(b []byte) (int, netip.AddrPort, error) {
	n, from, err := h.pc.ReadFromUDPAddrPort(b)
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
}

// write sends one datagram to to; errors cost this datagram only.
func (h *udpHost) write(b []byte, to netip.AddrPort) {
	h.pc.WriteToUDPAddrPort(b, to)
}

func (h *udpHost) Close() error { return h.pc.Close() }
