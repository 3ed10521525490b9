package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleTCP is the tcp.Forwarder handler; gVisor runs it on a goroutine of
// its own for each new SYN. It dials the host first, so that a refused or
// failed dial becomes a RST (the guest sees ECONNREFUSED), and only then
// completes the handshake with the guest.
//
// gVisor starts the goroutine before the handler can register with
// s.flows; one started for a SYN that arrived just before teardown finds
// the tracker closed, sends its RST and returns at once.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	growStack()
	if !s.flows.enter() {
		r.Complete(true)
		return
	}
	// relaying: the relay's goroutine owns what is left to release.
	relaying := false
	defer func() {
		if !relaying {
			s.flows.leave()
		}
	}()

	id := r.ID()
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	seq, haveSeq := s.syns.take(synKey{src, dst})
	hostDst, v := s.route(dst)
	switch v {
	case forward:
	case silent:
		r.Complete(false) // no answer at all; the guest retransmits, then times out
		return
	default:
		r.Complete(true)
		return
	}
	denied, rule := s.egressDenied(policy.TCP, hostDst)
	if denied {
		r.Complete(!s.prohibitTCP(src, dst, seq, haveSeq))
		return
	}

	a, ok := s.tcp.admit(s.ctx, src.Addr(), dst)
	if !ok {
		r.Complete(true)
		return
	}
	defer func() {
		if !relaying {
			s.tcp.done(a)
		}
	}()

	dctx, cancel := context.WithTimeout(a.ctx, s.cfg.DialTimeout)
	host, err := s.dialHost(dctx, "tcp", hostDst)
	cancel()
	s.tcp.dialed(a)
	if err != nil {
		s.hostErrors.Add(1)
		// Unreachable: the ICMP error a router would send
		// (tcpunreach.go). Refused, timed out, evicted, shutting down, or
		// no sequence number: RST.
		if code, ok := unreachableCode(err, dst.Addr().Is6()); ok && haveSeq && s.tcpUnreachable(src, dst, seq, code) {
			r.Complete(false)
			return
		}
		r.Complete(true)
		return
	}

	guest := new(guestConn) // its queue is the endpoint's
	hctx, cancel := context.WithTimeout(a.ctx, s.tcp.lim.TCPHandshakeTimeout)
	ep, err := s.createEndpoint(hctx, r, &guest.wq)
	timedOut := errors.Is(context.Cause(hctx), context.DeadlineExceeded)
	cancel()
	r.Complete(false)
	if err != nil {
		// The guest reset, did not answer in time, was evicted, or we are
		// shutting down: the host socket goes at once, with a RST.
		if timedOut {
			s.refused.add(TCPHandshakeTimeout)
		}
		relay.Abort(host)
		return
	}
	s.tcp.established(a)
	guest.init(ep)
	host = s.polled(host)
	f := s.trackFlow(policy.TCP, src, dst, hostDst, rule, func() { relay.Abort(host) })
	// The relay runs on goroutines of its own, only while bytes flow, and
	// this one ends: its stack grew in the dial and the handshake, and an
	// idle connection would keep it for as long as it lasts.
	relaying = true
	relay.Go(s.ctx, guest, host, &f.out, &f.in, func() {
		s.untrackFlow(f)
		s.tcp.done(a)
		s.flows.leave()
	})
}

// polled makes a host TCP conn wait through the Stack's Poller when idle
// (relay.PolledConn); from then on it must be closed through what polled
// returns.
func (s *Stack) polled(c net.Conn) net.Conn {
	tc, ok := c.(relay.Socket)
	if !ok || s.poller == nil {
		return c
	}
	pc, err := s.poller.Conn(tc)
	if err != nil {
		return c
	}
	return pc
}

// growStack grows a new goroutine's stack in one step to what a write
// into gVisor's TCP (down to the tap) or a host dial needs: the handler
// calls it, and relay through relay.DeepWriter. A goroutine
// starts with a small stack that doubles when a call needs more, each time
// copying the stack and adjusting every frame on it; doubling three times
// deep in gVisor's send path cost a seventh of the CPU of a
// connect/request/close load. One large frame while the stack is still
// shallow makes the runtime copy a few frames once.
//
//go:noinline
func growStack() byte {
	var b [growStackBytes]byte
	b[growStackIndex] = 1
	return b[growStackOther]
}

// growStackBytes: with the frames below it and the runtime's guard, the
// stack becomes 16 KiB.
const growStackBytes = 12 << 10

// Keep growStack's array: the compiler cannot prove what these hold
// (never written).
var growStackIndex, growStackOther int

// createEndpoint runs r.CreateEndpoint, which blocks until the guest
// completes the handshake, or ctx ends (the stack's, a timeout, an
// eviction). gVisor gives no way to cancel it, so we wake it the way it
// waits: a writable event on its queue makes it look
// at the (not yet connected) endpoint and fail. The event is repeated
// because it is lost if it comes before CreateEndpoint registers its
// waiter.
func (s *Stack) createEndpoint(ctx context.Context, r *tcp.ForwarderRequest, wq *waiter.Queue) (tcpip.Endpoint, error) {
	created := make(chan struct{})
	kicked := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(kicked)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			wq.Notify(waiter.WritableEvents)
			select {
			case <-created:
				return
			case <-t.C:
			}
		}
	})
	e, tcpErr := r.CreateEndpoint(wq)
	close(created)
	if !stop() {
		<-kicked // the kicker ran; wait for it to see created
	}
	if tcpErr != nil {
		return nil, errors.New(tcpErr.String())
	}
	// A handshake that completed as ctx ended is kept (an eviction or a
	// timeout that came too late), unless the stack is going away.
	if s.ctx.Err() != nil {
		e.Abort()
		e.Close()
		return nil, s.ctx.Err()
	}
	return e, nil
}
