package stack

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usernet/usernet/policy"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram is the largest UDP payload (IPv4: 65535-20-8).
const maxDatagram = 65535

// udpRcvBuf is the receive buffer of each forwarded flow's gVisor endpoint
// (gVisor's default is 32 KiB). Memory is only used while datagrams queue.
const udpRcvBuf = 1 << 20

// datagramPool's buffers have room for a datagram and, before it, the
// headers of a reply frame (replyHeadroom, udpreply.go).
var datagramPool = sync.Pool{New: func() any { b := make([]byte, replyHeadroom+maxDatagram); return &b }}

// handleUDP is the udp.Forwarder handler. gVisor calls it synchronously on
// the inbound path for a datagram that no endpoint claimed, that is, the
// first datagram of a new flow (src ip:port, dst ip:port). It admits the
// flow (Limits.UDPFlows), creates a connected gVisor endpoint for it, which
// then receives the flow's later datagrams through gVisor's demultiplexer,
// and starts the flow's goroutine. It returns true ("handled") for
// everything, so that gVisor never answers with ICMP port unreachable on
// our behalf.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	hostDst, v := s.route(dst)
	if v != forward {
		return true // drop: reject, silent, and unreachable (already sent by the link filter)
	}
	denied, rule := s.egressDenied(policy.UDP, hostDst)
	if denied {
		s.prohibitUDP(src, dst)
		return true
	}
	if !s.reserveUDPFlow() {
		s.refuse(RefusedUDPFlows, 1)
		s.prohibitUDP(src, dst)
		return true
	}
	if !s.flows.enter() {
		s.udp.releaseSlot()
		return true
	}
	var wq waiter.Queue
	ep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		// A concurrent first datagram of the same flow registered it.
		s.udp.releaseSlot()
		s.flows.leave()
		return true
	}
	// gVisor gives a UDP endpoint a 32 KiB receive buffer (~23 datagrams
	// of 1400 bytes): a burst from the guest overflows it before the
	// flow's goroutine is scheduled, and the rest is dropped silently.
	// Measured (iperf3 -u -l 1400 ns→host, MTU 65520, 3 s, 2 runs each):
	// gVisor UDP ReceiveBufferErrors ~400k → ~90k with 1 MiB, delivered
	// 0.28 → 0.39 Gbit/s at -b 1G and 0.26 → 0.34 unlimited. The big
	// buffer comes from a budget (Limits.UDPBufferBytes): it only holds
	// memory while datagrams queue, but a guest could make them queue in
	// every flow at once.
	rcv := s.udp.grantRcvBuf()
	ep.SocketOptions().SetReceiveBufferSize(int64(rcv), true)
	idle := s.cfg.udpIdle
	if dst.Port() == 53 {
		idle = s.cfg.dnsIdle
	}
	// The goroutine opens the host socket off the inbound path; its
	// tracker membership passes to the flow, which leaves when it ends.
	go func() {
		to, err := s.toHost(s.ctx, "udp", hostDst)
		var port *udpPort
		if err == nil {
			port, err = s.acquireUDPPort(src, to)
		}
		if err != nil {
			s.hostErrors.Add(1)
			ep.Close()
			s.udp.releaseSlot()
			s.udp.returnRcvBuf(rcv)
			switch {
			case errors.Is(err, errUDPPortsFull):
				s.refuse(RefusedUDPPorts, 1)
				s.prohibitUDP(src, dst)
			case s.ctx.Err() == nil:
				s.logf("stack: udp %v → %v: %v", src, to, err)
			}
			s.flows.leave()
			return
		}
		s.startUDPFlow(port, ep, &wq, dst, to, idle, false, rcv, rule)
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
//
// Memory: an idle flow holds its endpoint, a parked goroutine and a timer,
// and an idle port its socket and a parked goroutine; datagram buffers
// come from datagramPool only while a datagram is in hand, so that memory
// follows the traffic, not the number of flows.

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
	refs int // flows; guarded by udpTable.mu

	mu        sync.Mutex
	flows     map[netip.AddrPort]*udpFlow // by host address; guarded by mu
	hostFirst int                         // flows made by the reader; guarded by mu
}

// udpFlow is one flow of a udpPort.
type udpFlow struct {
	port    *udpPort
	ep      tcpip.Endpoint // the guest side: local visible, remote the guest port
	wq      *waiter.Queue  // ep's
	visible netip.AddrPort // the remote as the guest sees it
	hostDst netip.AddrPort // where the port's socket sends the flow's datagrams
	idle    time.Duration
	rcvBuf  int // granted by udpTable.grantRcvBuf

	last     atomic.Int64 // traffic last seen, udpTable.now
	timer    *time.Timer  // checks last; set before the flow is published
	entry    waiter.Entry // on wq: the guest sent datagrams (kickUDPFlow)
	draining atomic.Bool  // a drainUDPFlow goroutine runs
	once     sync.Once
	slot     atomic.Bool // holds one of udpTable's flow slots
	fast     udpFastKey  // in s.udpFast with fastF
	fastF    *udpFastFlow

	mu      sync.Mutex
	stopCtx func() bool // guarded by mu; unregisters the flow from the stack's context
	ended   bool        // guarded by mu
	// hostFirst: made by the port's reader, counted in udpPort.hostFirst.
	hostFirst bool
	// rec is the flow in the live registry (flows.go), with its bytes.
	rec *flowRec
}

// touch notes traffic: the idle timer reads it when it fires.
func (f *udpFlow) touch(t *udpTable) { f.last.Store(t.now()) }

// closeUDPFlow ends a flow (idle, evicted, the stack shutting down): it
// closes the endpoint and cleans up, once.
func (s *Stack) closeUDPFlow(f *udpFlow) {
	f.once.Do(func() {
		f.ep.Close()
		s.endUDPFlow(f)
	})
}

// acquireUDPPort returns the host socket of guest port src for loopback or
// other destinations, opening it (and starting its reader) for the first
// flow; each call must be paired with releaseUDPPort. At Limits.UDPPorts
// it evicts idle ports or fails with errUDPPortsFull.
func (s *Stack) acquireUDPPort(src, hostDst netip.AddrPort) (*udpPort, error) {
	k := udpPortKey{src: src, loopback: hostDst.Addr().IsLoopback()}
	t := &s.udp
	t.mu.Lock()
	if p := t.ports[k]; p != nil {
		p.refs++
		t.mu.Unlock()
		return p, nil
	}
	var victims []*udpFlow
	if len(t.ports) >= t.maxPorts {
		victims = t.evictPortsLocked()
	}
	defer s.closeFlows(victims) // after the unlock
	defer t.mu.Unlock()
	if len(t.ports) >= t.maxPorts {
		return nil, errUDPPortsFull
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
	t.ports[k] = p
	return p, nil
}

func (s *Stack) releaseUDPPort(p *udpPort) {
	t := &s.udp
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.refs--; p.refs == 0 {
		if t.ports[p.key] == p {
			delete(t.ports, p.key)
		}
		p.host.Close()
	}
}

// readUDPPort reads the port's host socket until it is closed and hands
// each datagram to the flow of its sender, making a flow for a new sender.
func (s *Stack) readUDPPort(p *udpPort) {
	r := new(udpRecv)
	for {
		err := p.host.readLoop(r, func(buf []byte, from netip.AddrPort) {
			b := buf[replyHeadroom:]
			p.mu.Lock()
			f := p.flows[from]
			p.mu.Unlock()
			if f == nil {
				f = s.hostFirstFlow(p, from)
			}
			if f != nil {
				f.touch(&s.udp)
				f.rec.in.Add(uint64(len(b)))
				if s.replyFast(f.fastF, buf) {
					return
				}
				var r bytes.Reader
				r.Reset(b)
				f.ep.Write(&r, tcpip.WriteOptions{})
			}
		})
		if err == nil {
			continue
		}
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
	undo := func() {
		p.mu.Lock()
		p.hostFirst--
		p.mu.Unlock()
	}
	if !s.reserveUDPFlow() {
		s.refuse(RefusedUDPFlows, 1)
		undo()
		return nil
	}
	ep, wq, err := s.bindUDP(visible, p.key.src, true)
	if err == nil {
		s.udp.mu.Lock()
		if p.refs == 0 || s.udp.ports[p.key] != p {
			// The port's last flow ended after this datagram came
			// in (the socket is closed, the datagram too late), or
			// the port was evicted.
			err = errShutDown
		} else {
			p.refs++
		}
		s.udp.mu.Unlock()
		if err != nil {
			ep.Close()
		}
	}
	if err != nil {
		s.udp.releaseSlot()
		undo()
		return nil // e.g. shutting down
	}
	if !s.flows.enter() {
		ep.Close()
		s.releaseUDPPort(p)
		s.udp.releaseSlot()
		undo()
		return nil
	}
	return s.startUDPFlow(p, ep, wq, visible, from, s.cfg.udpIdle, true, 0, 0)
}

// startUDPFlow registers a flow with its port (and the fast path), arms
// its idle timer and the relay of the guest's datagrams. The caller has
// reserved the flow's slot and a tracker membership, which the flow gives
// back when it ends.
//
// No goroutine waits for the guest's datagrams: the endpoint's readable
// event starts one (drainUDPFlow) that lives while datagrams are queued,
// which after the first one is rare (the fast path takes them).
func (s *Stack) startUDPFlow(p *udpPort, ep tcpip.Endpoint, wq *waiter.Queue, visible, hostDst netip.AddrPort, idle time.Duration, hostFirst bool, rcvBuf, rule int) *udpFlow {
	f := &udpFlow{port: p, ep: ep, wq: wq, visible: visible, hostDst: hostDst, idle: idle, rcvBuf: rcvBuf, hostFirst: hostFirst}
	f.touch(&s.udp)
	f.timer = time.AfterFunc(idle, func() { s.checkIdle(f) })
	// In the live set (kill_existing) only once whole, below.
	f.rec = newFlowRec(policy.UDP, p.key.src, visible, hostDst, rule, func() { s.closeUDPFlow(f) })
	// The fast path's entry, set before the flow is published (the port's
	// reader and eviction read it). The key is what the link filter sees
	// on the wire: the guest port and the remote as the guest addresses
	// it (both plain, unmapped).
	f.fast, f.fastF = udpFastKey{src: p.key.src, dst: visible}, udpFastFlowOf(p.host, hostDst, p.key.src, visible, func() { f.touch(&s.udp) }, &f.rec.out)
	f.slot.Store(true)
	f.entry = waiter.NewFunctionEntry(waiter.ReadableEvents, func(waiter.EventMask) { s.kickUDPFlow(f) })
	wq.EventRegister(&f.entry)
	s.udp.mu.Lock()
	s.udp.flows[f] = struct{}{}
	s.udp.mu.Unlock()
	p.mu.Lock()
	p.flows[hostDst] = f
	p.mu.Unlock()
	// From now on the link filter writes this flow's datagrams to the
	// host itself (udpfast.go); those that reach the gVisor endpoint
	// anyway (queued before, or not taken by the fast path) are relayed
	// by drainUDPFlow.
	s.udpFast.add(f.fast, f.fastF)
	stop := context.AfterFunc(s.ctx, func() { s.closeUDPFlow(f) })
	f.mu.Lock()
	if f.ended {
		f.mu.Unlock()
		stop()
	} else {
		f.stopCtx = stop
		// endUDPFlow marks the flow ended, under f.mu, before it
		// takes the record out: published now or never.
		s.live.add(f.rec)
		f.mu.Unlock()
	}
	// The first datagram was queued before the entry was registered.
	s.kickUDPFlow(f)
	return f
}

// kickUDPFlow starts a drainUDPFlow goroutine unless one runs. It is
// called from inside the endpoint's notification (which holds the
// queue's lock: no reading here).
func (s *Stack) kickUDPFlow(f *udpFlow) {
	if f.draining.CompareAndSwap(false, true) && !s.flows.goFunc(func() { s.drainUDPFlow(f) }) {
		f.draining.Store(false)
	}
}

// drainUDPFlow relays the datagrams queued on a flow's endpoint to the
// host, then exits; a datagram queued while it was stopping starts it
// again (kickUDPFlow) or is taken by the check after the stop.
func (s *Stack) drainUDPFlow(f *udpFlow) {
	for {
		open := relayQueued(f.ep, func(b []byte) {
			f.touch(&s.udp)
			f.rec.out.Add(uint64(len(b)))
			f.port.host.write(b, f.hostDst)
		})
		f.draining.Store(false)
		if !open || f.ep.Readiness(waiter.ReadableEvents) == 0 || !f.draining.CompareAndSwap(false, true) {
			return
		}
	}
}

// checkIdle runs when a flow's timer fires: the flow ends if it has seen
// no traffic for its idle time, else the timer waits for the rest. The
// timer is re-armed only here, so datagrams cost an atomic store, not a
// timer reset.
func (s *Stack) checkIdle(f *udpFlow) {
	quiet := time.Duration(s.udp.now() - f.last.Load())
	if quiet >= f.idle {
		s.closeUDPFlow(f)
		return
	}
	f.timer.Reset(f.idle - quiet)
}

// endUDPFlow undoes startUDPFlow (closeUDPFlow calls it once).
func (s *Stack) endUDPFlow(f *udpFlow) {
	defer s.flows.leave()
	p := f.port
	f.mu.Lock()
	f.ended = true
	stop := f.stopCtx
	f.mu.Unlock()
	if stop != nil {
		stop()
	}
	f.wq.EventUnregister(&f.entry)
	f.timer.Stop()
	s.udpFast.remove(f.fast, f.fastF)
	f.fastF.close()
	p.mu.Lock()
	if p.flows[f.hostDst] == f {
		delete(p.flows, f.hostDst)
	}
	if f.hostFirst {
		p.hostFirst--
	}
	p.mu.Unlock()
	s.udp.mu.Lock()
	delete(s.udp.flows, f)
	s.udp.mu.Unlock()
	s.untrackFlow(f.rec)
	if f.slot.Swap(false) {
		s.udp.releaseSlot()
	}
	s.udp.returnRcvBuf(f.rcvBuf)
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

// relayQueued hands the datagrams queued on ep to send, each in a buffer
// of datagramPool taken only while it is in hand, until none is left; false
// means ep is closed. Errors of one datagram do not end the flow: the
// endpoint reports an ICMP error from the guest (port unreachable for one
// of our datagrams) on its next read.
func relayQueued(ep tcpip.Endpoint, send func([]byte)) (open bool) {
	for {
		bp := datagramPool.Get().(*[]byte)
		w := tcpip.SliceWriter(*bp)
		res, err := ep.Read(&w, tcpip.ReadOptions{})
		if err == nil {
			send((*bp)[:res.Count])
			datagramPool.Put(bp)
			continue
		}
		datagramPool.Put(bp)
		switch err.(type) {
		case *tcpip.ErrWouldBlock:
			return true
		case *tcpip.ErrConnectionRefused:
		default:
			return false
		}
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

// recvPooled waits until the socket behind rc is readable, then receives
// one datagram into a buffer of datagramPool and hands it to fn.
func recvPooled(rc syscall.RawConn, fn func(b []byte, from unix.Sockaddr)) error {
	var (
		bp   *[]byte
		n    int
		from unix.Sockaddr
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		bp = datagramPool.Get().(*[]byte)
		n, from, rerr = unix.Recvfrom(int(fd), *bp, unix.MSG_DONTWAIT)
		if rerr == unix.EAGAIN {
			datagramPool.Put(bp)
			return false // wait for the poller
		}
		return true
	})
	if err != nil {
		return err
	}
	defer datagramPool.Put(bp)
	if rerr == unix.EINTR {
		return nil
	}
	if rerr != nil {
		return os.NewSyscallError("recvfrom", rerr)
	}
	fn((*bp)[:n], from)
	return nil
}

// write sends one datagram to to; errors cost this datagram only.
func (h *udpHost) write(b []byte, to netip.AddrPort) {
	h.pc.WriteToUDPAddrPort(b, to)
}

func (h *udpHost) Close() error { return h.pc.Close() }
