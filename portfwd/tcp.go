package portfwd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// copyBufSize is the buffer of each proxy direction: 256 KiB moved host →
// namespace throughput by ~30% over io.Copy's 32 KiB (NOTES.md §2, rootlesskit#630).
const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// serveTCP accepts clients of f until f's listener is closed.
func (r *Registry) serveTCP(f *forward) {
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.logf("portfwd: %v: accept: %v", f.Rule, err)
			if !backoff(f.ctx, &delay) {
				return
			}
			continue
		}
		delay = 0
		r.wg.Go(func() { r.forwardTCP(f, c) })
	}
}

// backoff waits after a failed accept or read (EMFILE and friends), doubling
// *delay from 5ms up to 1s, as net/http does. It returns false if ctx ends first.
func backoff(ctx context.Context, delay *time.Duration) bool {
	*delay = min(max(2**delay, 5*time.Millisecond), time.Second)
	t := time.NewTimer(*delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// forwardTCP dials the guest for client and proxies between them until both
// directions are done or f ends.
func (r *Registry) forwardTCP(f *forward, client net.Conn) {
	ctx := f.ctx
	caddr := addrPortOf(client.RemoteAddr())
	dst := netip.AddrPortFrom(f.GuestAddr, f.GuestPort)
	src := r.srcFor(caddr, f.GuestAddr)
	guest, err := r.dialTCP(ctx, src, dst)
	if err != nil {
		r.logfUnlessDone(ctx, "portfwd: %v: client %v: %v", f.Rule, caddr, err)
		abortConn(client) // the client sees a reset, not an empty reply
		return
	}
	proxy(ctx, client, guest)
}

// dialTCP dials dst from src within the dial timeout, retrying once from any
// port when src's port is taken (two loopback clients with the same port both
// appear as the gateway).
func (r *Registry) dialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	c, err := r.cfg.Dialer.DialTCP(ctx, src, dst)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && src.Port() != 0 {
		c, err = r.cfg.Dialer.DialTCP(ctx, netip.AddrPortFrom(src.Addr(), 0), dst)
	}
	return c, err
}

// proxy copies a→b and b→a, passing each direction's EOF on as a half-close.
// An error in either direction, or the end of ctx, aborts both. It closes both
// conns before it returns.
func proxy(ctx context.Context, a, b net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			abortConn(a)
			abortConn(b)
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { copyHalf(b, a, abort) })
	copyHalf(a, b, abort)
	wg.Wait()
	a.Close()
	b.Close()
}

// copyHalf copies src to dst; at src's EOF it half-closes dst (and src's read
// side) where they support it. On any error it calls abort.
func copyHalf(dst, src net.Conn, abort func()) {
	buf := copyBufs.Get().(*[]byte)
	// The wrappers hide ReaderFrom/WriterTo, which would bypass our buffer
	// (net.TCPConn.WriteTo into a gVisor conn falls back to 32 KiB copies).
	_, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
	copyBufs.Put(buf)
	if err != nil {
		abort()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() != nil {
		abort()
		return
	}
	if cr, ok := src.(interface{ CloseRead() error }); ok {
		cr.CloseRead()
	}
}

// abortConn closes c, with a reset where c supports SO_LINGER 0.
func abortConn(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}

type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

// addrPortOf returns a's address and port, or the zero AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
