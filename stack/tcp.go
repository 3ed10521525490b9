package stack

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
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
	if !s.flows.enter() {
		r.Complete(true)
		return
	}
	defer s.flows.leave()

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
	if s.egressDenied(policy.TCP, hostDst) {
		r.Complete(!s.prohibitTCP(src, dst, seq, haveSeq))
		return
	}

	dctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	host, err := s.dialHost(dctx, "tcp", hostDst)
	cancel()
	if err != nil {
		// Unreachable: the ICMP error a router would send
		// (tcpunreach.go). Refused, timed out, shutting down, or no
		// sequence number: RST.
		if code, ok := unreachableCode(err, dst.Addr().Is6()); ok && haveSeq && s.tcpUnreachable(src, dst, seq, code) {
			r.Complete(false)
			return
		}
		r.Complete(true)
		return
	}

	var wq waiter.Queue
	ep, err := s.createEndpoint(r, &wq)
	r.Complete(false)
	if err != nil {
		// The guest went away (RST) or we are shutting down.
		relay.Abort(host)
		return
	}
	relay.Run(s.ctx, guestConn{gonet.NewTCPConn(&wq, ep), ep}, host)
}

// createEndpoint runs r.CreateEndpoint, which blocks until the guest
// completes the handshake. gVisor gives no way to cancel it, so on shutdown
// we wake it the way it waits: a writable event on its queue makes it look
// at the (not yet connected) endpoint and fail. The event is repeated
// because it is lost if it comes before CreateEndpoint registers its
// waiter.
func (s *Stack) createEndpoint(r *tcp.ForwarderRequest, wq *waiter.Queue) (tcpip.Endpoint, error) {
	created := make(chan struct{})
	kicked := make(chan struct{})
	stop := context.AfterFunc(s.ctx, func() {
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
	if s.ctx.Err() != nil {
		e.Abort()
		e.Close()
		return nil, s.ctx.Err()
	}
	return e, nil
}

// guestConn is the guest's side of a forwarded flow, for relay: gonet
// cannot send a RST itself, the endpoint can.
type guestConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

var _ relay.Aborter = guestConn{}

// Abort implements relay.Aborter: RST to the guest.
func (c guestConn) Abort() {
	c.ep.Abort()
	c.TCPConn.Close()
}
