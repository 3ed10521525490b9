// Package relay is the one TCP relay of usernet: it copies a flow's bytes
// between two connections, both ways, and passes each side's end on to the
// other as that side ended it: a FIN as a half-close, a reset (or any other
// error) as a reset. The stack uses it for the namespace's outgoing flows
// (guest ↔ host socket) and portfwd for the port forwards (host client ↔
// guest); it owns the copy buffers of both.
//
// relay must not import gVisor or any usernet package: it sits below stack
// and portfwd, and sees their connections only as net.Conn, plus the
// optional CloseWrite, Aborter and SetLinger methods.
package relay

import (
	"context"
	"io"
	"net"
	"sync"
)

// Aborter is a connection that can be closed with a reset (RST) instead of
// a FIN, so that its peer's reads fail instead of ending cleanly. Abort
// closes the connection. Connections that cannot do it through SO_LINGER
// (the stack's gVisor-side conns) implement it.
type Aborter interface {
	Abort()
}

// Abort closes c with a reset where c can send one: through its Abort
// method, else SO_LINGER 0 (*net.TCPConn); other conns are just closed.
func Abort(c net.Conn) {
	if ab, ok := c.(Aborter); ok {
		ab.Abort()
		return
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}

// Run copies a to b and b to a until both directions are done, then
// closes both. EOF on one side becomes a half-close (CloseWrite, where the
// other side has it) of the other; an error on either side (a read or
// write error, such as a reset, or a half-close that fails), or the end of
// ctx, aborts both with Abort: an upload cut short must not look complete
// to the receiver. Run returns when both copies have.
func Run(ctx context.Context, a, b net.Conn) {
	var once sync.Once
	// end closes both conns once: gracefully after a clean exchange (both
	// FINs have been passed on), with resets otherwise.
	end := func(abort bool) {
		once.Do(func() {
			if abort {
				Abort(a)
				Abort(b)
			} else {
				a.Close()
				b.Close()
			}
		})
	}
	stop := context.AfterFunc(ctx, func() { end(true) })
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() { pipe(b, a, end) })
	pipe(a, b, end)
	wg.Wait()
	end(false)
}

// pipe copies src to dst and passes src's EOF on as dst's half-close. On
// an error it aborts both conns (through end), which also makes the other
// direction's blocked Read or Write return.
func pipe(dst, src net.Conn, end func(abort bool)) {
	if err := copyHalf(dst, src); err != nil {
		end(true)
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() != nil {
		end(true)
	}
}

// Copy buffers. A direction starts with a small buffer and moves to a
// large one once a read fills the small one: bulk transfers get large
// reads and writes, while idle connections (keep-alives, possibly
// thousands) hold only the small one. Both come from pools, so that
// short connections (one request, one answer) do not each allocate
// buffers for the GC to collect.
const (
	smallBufSize = 16 << 10
	largeBufSize = 256 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// copyHalf copies src to dst until src's EOF (nil) or an error. It does
// not use io.Copy: *net.TCPConn's ReadFrom and WriteTo would take over
// with buffers of their own, bypassing the ones above.
func copyHalf(dst io.Writer, src io.Reader) error {
	small := smallBufs.Get().(*[]byte)
	buf := *small
	var large *[]byte
	defer func() {
		if small != nil {
			smallBufs.Put(small)
		}
		if large != nil {
			largeBufs.Put(large)
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
			large = largeBufs.Get().(*[]byte)
			buf = *large
			smallBufs.Put(small)
			small = nil
		}
	}
}
