package dns

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// TCP design: each client connection is served by one goroutine that reads
// length-prefixed queries one after the other (so pipelined queries work,
// answered in order) and relays them over one upstream TCP connection,
// dialled on the first query and kept for the client connection's life. If
// a reused upstream connection fails (resolvers close idle connections
// after a few seconds), the query is retried once on a fresh one. Serving
// pipelined queries one at a time costs head-of-line blocking on a slow
// answer, which RFC 7766 allows; stub resolvers rarely pipeline.

// serveTCP accepts client connections from ln and serves each on a
// goroutine counted in wg. It returns nil once ctx has ended, or an error if
// ln is closed while ctx is alive.
func (f *Forwarder) serveTCP(ctx context.Context, wg *sync.WaitGroup, ln net.Listener) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("dns: tcp: %w", err)
			}
			f.logf("dns: tcp accept: %v", err)
			backoff = pause(ctx, backoff)
			continue
		}
		backoff = 0
		select {
		case f.tcpSem <- struct{}{}:
		default:
			// Counted before the close: whoever sees the close (a
			// client, a test) must find it counted.
			f.tcpRejected.Add(1)
			c.Close()
			if f.dropLog.Allow(logEvery) {
				f.logf("dns: closing new TCP connections: %d open (%d closed so far)", cap(f.tcpSem), f.tcpRejected.Load())
			}
			continue
		}
		wg.Go(func() {
			defer func() { <-f.tcpSem }()
			f.serveTCPConn(ctx, c)
		})
	}
}

// serveTCPConn relays the queries of one client connection until the
// client closes it, idles for f.idleTimeout, sends something malformed, a
// query fails, or ctx ends. It closes c.
func (f *Forwarder) serveTCPConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	w := watch(ctx, c)
	defer w.release()
	var up *tcpUpstream
	defer func() { up.close() }() // up changes below; close the last one

	r := bufio.NewReader(c)
	for {
		if w.setDeadline(time.Now().Add(f.idleTimeout)) != nil {
			return
		}
		q, err := readMsg(r)
		if err != nil || !isQuery(q) {
			// EOF, idle timeout, shutdown, or a malformed frame: the
			// client's business, not worth a log line.
			return
		}
		deadline := time.Now().Add(f.timeout)
		reply := f.refusal(q)
		if reply == nil {
			to := f.upstreamForQuery()
			reply, err = f.exchangeTCP(ctx, &up, to, q, deadline)
			if err != nil {
				if ctx.Err() == nil && f.upstreamLog.Allow(logEvery) {
					f.logf("dns: tcp query to %v: %v", to, err)
				}
				return
			}
			f.learn(q, reply)
		}
		if w.setDeadline(deadline) != nil {
			return
		}
		if err := writeMsg(c, reply); err != nil {
			return
		}
	}
}

// tcpUpstream is one TCP connection to the upstream, owned by the
// serveTCPConn goroutine that dialled it.
type tcpUpstream struct {
	to netip.AddrPort // the resolver it is connected to
	c  net.Conn
	w  *interruptible
}

// close closes u; a nil u is fine.
func (u *tcpUpstream) close() {
	if u == nil {
		return
	}
	u.w.release()
	u.c.Close()
}

// exchangeTCP relays q to the resolver to over *up, dialling it if nil or
// connected to another resolver (the upstream moved), and returns the
// reply. On failure *up is closed and set to nil; if the failed connection
// had been reused, the query is retried once on a fresh one. Everything
// must happen before deadline.
func (f *Forwarder) exchangeTCP(ctx context.Context, up **tcpUpstream, to netip.AddrPort, q []byte, deadline time.Time) ([]byte, error) {
	if *up != nil && (*up).to != to {
		(*up).close()
		*up = nil
	}
	for {
		fresh := *up == nil
		if fresh {
			u, err := f.dialTCP(ctx, to, deadline)
			if err != nil {
				return nil, err
			}
			*up = u
		}
		reply, err := (*up).exchange(q, deadline)
		if err == nil {
			return reply, nil
		}
		(*up).close()
		*up = nil
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, errors.New("no reply in time")
		}
		if fresh {
			return nil, err
		}
	}
}

func (f *Forwarder) dialTCP(ctx context.Context, to netip.AddrPort, deadline time.Time) (*tcpUpstream, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := f.dialer.DialContext(dctx, "tcp", to.String())
	if err != nil {
		return nil, err
	}
	return &tcpUpstream{to: to, c: c, w: watch(ctx, c)}, nil
}

// exchange writes q and reads responses until one carries q's ID.
func (u *tcpUpstream) exchange(q []byte, deadline time.Time) ([]byte, error) {
	if err := u.w.setDeadline(deadline); err != nil {
		return nil, err
	}
	if err := writeMsg(u.c, q); err != nil {
		return nil, err
	}
	for {
		m, err := readMsg(u.c)
		if err != nil {
			return nil, err
		}
		if isReplyTo(m, q) {
			return m, nil
		}
	}
}

// readMsg reads one message with its 2-byte length prefix (RFC 1035
// 4.2.2). A clean EOF before the prefix is io.EOF; one inside a message is
// io.ErrUnexpectedEOF.
func readMsg(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return msg, nil
}

// writeMsg writes msg with its 2-byte length prefix in one Write, so that
// prefix and message share a segment.
func writeMsg(w io.Writer, msg []byte) error {
	if len(msg) > maxMsgSize {
		return fmt.Errorf("message of %d bytes exceeds %d", len(msg), maxMsgSize)
	}
	buf := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(buf, uint16(len(msg)))
	copy(buf[2:], msg)
	_, err := w.Write(buf)
	return err
}
