package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

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
		abortConn(host)
		return
	}
	proxyTCP(s.ctx, ep, gonet.NewTCPConn(&wq, ep), host)
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

// closeWriter is implemented by *net.TCPConn and *gonet.TCPConn (and
// *net.UnixConn): half-close.
type closeWriter interface {
	CloseWrite() error
}

// proxyTCP copies both ways between the guest's connection (ep, wrapped
// in guest) and the host's until both directions are done, then closes
// both. EOF on one side becomes a half-close (FIN) on the other; an error
// on either side (a RST, or ctx ending) aborts both with RST. It returns
// when both copies have.
func proxyTCP(ctx context.Context, ep tcpip.Endpoint, guest *gonet.TCPConn, host net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			abortConn(host)
			ep.Abort() // RST to the guest
			guest.Close()
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()

	pipe := func(dst, src net.Conn) {
		if err := copyConn(dst, src); err != nil {
			abort()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { pipe(host, guest) })
	pipe(guest, host)
	wg.Wait()
	// After a clean exchange both sides have sent FIN; after an abort
	// these are no-ops.
	guest.Close()
	host.Close()
}

// abortConn closes a host connection with RST rather than FIN.
func abortConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// Copy buffers. A flow starts with a small buffer and moves to a large one
// once a read fills the small one: bulk transfers get 256 KiB buffers
// (NOTES.md §2: +30% host → namespace), idle connections (keep-alives,
// thousands of them) hold 16 KiB.
const (
	smallCopyBuf = 16 << 10
	largeCopyBuf = 256 << 10
)

var (
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallCopyBuf); return &b }}
	largeBufPool = sync.Pool{New: func() any { b := make([]byte, largeCopyBuf); return &b }}
)

// copyConn copies src to dst until EOF (nil) or an error. It does not use
// io.Copy: *net.TCPConn's ReadFrom/WriteTo would take over with their own
// 32 KiB buffer. Both buffers come from pools: short connections (one
// request, one answer) would otherwise allocate 32 KiB each, which was 60%
// of the bytes allocated in BenchmarkTapTCPCRR and kept the GC busy.
func copyConn(dst io.Writer, src io.Reader) error {
	small := smallBufPool.Get().(*[]byte)
	buf := *small
	var large *[]byte
	defer func() {
		if small != nil {
			smallBufPool.Put(small)
		}
		if large != nil {
			largeBufPool.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
		if n == len(buf) && large == nil {
			large = largeBufPool.Get().(*[]byte)
			buf = *large
			smallBufPool.Put(small)
			small = nil
		}
	}
}
