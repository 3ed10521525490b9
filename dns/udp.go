package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// UDP design: every query gets a fresh connected UDP socket to the upstream,
// closed when the query ends. Compared with a shared pool this needs no ID
// rewriting and no demultiplexing table (two clients may well pick the same
// ID at once), the kernel drops datagrams from anyone but the upstream, and
// each query leaves from a new random source port (RFC 5452). The price is a
// socket(2)+connect(2) per query, small next to a resolver round trip, and
// one descriptor per query in flight, which udpSem bounds.

// bufPool holds *[]byte of maxMsgSize for upstream replies: a reply must be
// read whole (a short buffer silently truncates a datagram), but only
// in-flight queries need one.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, maxMsgSize)
	return &b
}}

// serveUDP reads queries from pc and starts one goroutine, counted in wg,
// per query. It returns nil once ctx has ended, or an error if pc is closed
// while ctx is alive.
func (f *Forwarder) serveUDP(ctx context.Context, wg *sync.WaitGroup, pc net.PacketConn) error {
	buf := make([]byte, maxMsgSize)
	var backoff time.Duration
	for {
		n, client, err := pc.ReadFrom(buf)
		if n > 0 && client != nil {
			f.startUDPQuery(ctx, wg, pc, buf[:n], client)
		}
		if err == nil {
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("dns: udp: %w", err)
		}
		f.logf("dns: udp read: %v", err)
		backoff = pause(ctx, backoff)
	}
}

// startUDPQuery drops msg unless it is a query and there is room for it,
// and otherwise relays a copy of it on a new goroutine.
func (f *Forwarder) startUDPQuery(ctx context.Context, wg *sync.WaitGroup, pc net.PacketConn, msg []byte, client net.Addr) {
	if !isQuery(msg) {
		return
	}
	select {
	case f.udpSem <- struct{}{}:
	default:
		f.udpDropped.Add(1)
		if f.dropLog.Allow(logEvery) {
			f.logf("dns: dropping UDP queries: %d in flight (%d dropped so far)", cap(f.udpSem), f.udpDropped.Load())
		}
		return
	}
	q := bytes.Clone(msg)
	wg.Go(func() {
		defer func() { <-f.udpSem }()
		f.relayUDP(ctx, pc, q, client)
	})
}

// relayUDP sends q to the upstream and writes the matching reply, if one
// comes within f.timeout, back to client on pc.
func (f *Forwarder) relayUDP(ctx context.Context, pc net.PacketConn, q []byte, client net.Addr) {
	qctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)

	reply := f.refusal(q)
	if reply == nil {
		up := f.upstreamForQuery()
		var err error
		reply, err = f.exchangeUDP(qctx, up, q, *bufp)
		if err != nil {
			if ctx.Err() == nil && f.upstreamLog.Allow(logEvery) {
				f.logf("dns: udp query to %v: %v", up, err)
			}
			return
		}
		f.learn(q, reply)
	}
	if _, err := pc.WriteTo(reply, client); err != nil && ctx.Err() == nil {
		f.logf("dns: udp reply to %v: %v", client, err)
	}
}

// exchangeUDP sends q to up over a new connected socket and returns the
// first response with q's ID, read into buf. Other datagrams are ignored.
// It gives up when ctx ends.
func (f *Forwarder) exchangeUDP(ctx context.Context, up netip.AddrPort, q, buf []byte) ([]byte, error) {
	c, err := f.dialer.DialContext(ctx, "udp", up.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	w := watch(ctx, c) // the deadline of ctx, and its cancellation
	defer w.release()

	if _, err := c.Write(q); err != nil {
		return nil, ctxErr(ctx, err)
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		if isReplyTo(buf[:n], q) {
			return buf[:n], nil
		}
	}
}

// ctxErr returns a clearer error than "i/o timeout" when I/O failed because
// ctx ended (our deadline or our shutdown).
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return errors.New("no reply in time")
		}
		return cerr
	}
	return err
}
