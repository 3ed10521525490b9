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
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// Aborter is a connection that can be closed with a reset (RST) instead of
// a FIN, so that its peer's reads fail instead of ending cleanly. Abort
// closes the connection. Connections that cannot do it through SO_LINGER
// (the stack's gVisor-side conns) implement it.
type Aborter interface {
	Abort()
}

// ReadableWaiter is a connection that can wait for something to read
// (data, its end, or an error) without a buffer, so that an idle
// connection holds no copy buffer. *net.TCPConn does it through its raw
// socket; the stack's gVisor-side conns implement it. WaitReadable must
// return when the connection is closed; an error is the connection's, as
// Read would have returned it (a socket reports a reset only once).
type ReadableWaiter interface {
	WaitReadable() error
}

// DeepWriter is a connection whose Write runs deep: a user-space TCP
// stack, down to the device (the stack's gVisor-side conns). The relay
// calls GrowStack first thing on the goroutine that writes to it, so that
// the goroutine's stack can grow once, while it is shallow, instead of
// doubling again and again deep inside the first Writes.
type DeepWriter interface {
	GrowStack()
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
func Run(ctx context.Context, a, b net.Conn) { RunCounted(ctx, a, b, nil, nil) }

// RunCounted is Run that adds the bytes it copies from a to b to aToB, and
// from b to a to bToA, as they are written (nil: not counted).
func RunCounted(ctx context.Context, a, b net.Conn, aToB, bToA *atomic.Uint64) {
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
	wg.Go(func() { pipe(b, a, aToB, end) })
	pipe(a, b, bToA, end)
	wg.Wait()
	end(false)
}

// pipe copies src to dst and passes src's EOF on as dst's half-close. On
// an error it aborts both conns (through end), which also makes the other
// direction's blocked Read or Write return.
func pipe(dst, src net.Conn, count *atomic.Uint64, end func(abort bool)) {
	if d, ok := dst.(DeepWriter); ok {
		d.GrowStack()
	}
	if err := copyHalf(dst, src, count); err != nil {
		end(true)
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() != nil {
		end(true)
	}
}

// Copy buffers. A direction takes a buffer only when its source has
// something to read and gives it back once a read leaves it not full, so
// that an idle connection (keep-alives, possibly thousands) holds none. It
// starts with a small buffer and moves to a large one once a read fills
// the small one: bulk transfers get large reads and writes. Both come from
// pools, so that short connections (one request, one answer) do not each
// allocate buffers for the GC to collect.
const (
	smallBufSize = 16 << 10
	largeBufSize = 256 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
	// buffersHeld counts the buffers taken from the pools and not yet
	// given back (tests).
	buffersHeld atomic.Int64
)

// copyHalf copies src to dst until src's EOF (nil) or an error. It does
// not use io.Copy: *net.TCPConn's ReadFrom and WriteTo would take over
// with buffers of their own, bypassing the ones above.
func copyHalf(dst io.Writer, src io.Reader, count *atomic.Uint64) error {
	s := sourceOf(src)
	pool := &smallBufs
	wait := s.waitFirst
	for {
		if wait {
			if err := s.wait(); err != nil {
				return err
			}
		}
		b := pool.Get().(*[]byte)
		buffersHeld.Add(1)
		err := func() error {
			defer func() { pool.Put(b); buffersHeld.Add(-1) }()
			for {
				n, rerr := s.read(*b)
				if rerr == errWouldBlock {
					return nil // drained: wait without the buffer
				}
				if n > 0 {
					if _, werr := dst.Write((*b)[:n]); werr != nil {
						return werr
					}
					if count != nil {
						count.Add(uint64(n))
					}
				}
				if rerr != nil {
					return rerr
				}
				if n < len(*b) && s.waitFirst {
					return nil // probably drained: wait without the buffer
				}
				if n == len(*b) && pool == &smallBufs {
					pool.Put(b)
					pool = &largeBufs
					b = pool.Get().(*[]byte)
				}
			}
		}()
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
		wait = s.wait != nil
	}
}

// errWouldBlock is a source's read that found nothing to read.
var errWouldBlock = errors.New("relay: nothing to read")

// source is how copyHalf reads a connection.
type source struct {
	// read reads what is there; it blocks, or, for a source with wait,
	// may return errWouldBlock.
	read func(p []byte) (int, error)
	// wait, when not nil, waits without a buffer until there is
	// something to read.
	wait func() error
	// waitFirst: read blocks, so wait before each read that may find
	// nothing.
	waitFirst bool
}

func sourceOf(src io.Reader) source {
	switch c := src.(type) {
	case ReadableWaiter:
		return source{read: src.Read, wait: c.WaitReadable, waitFirst: true}
	case *net.TCPConn: // a stream socket: MSG_PEEK and read(2) apply
		rc, err := c.SyscallConn()
		if err != nil {
			break
		}
		return source{
			read: func(p []byte) (int, error) { return readNow(rc, p) },
			wait: func() error { return waitSocket(rc) },
		}
	}
	return source{read: src.Read}
}

// readNow reads what a stream socket has, without waiting: errWouldBlock
// when it has nothing, io.EOF at its end.
func readNow(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var err error
	if rerr := rc.Read(func(fd uintptr) bool {
		for {
			n, err = syscall.Read(int(fd), p)
			if err != syscall.EINTR {
				return true
			}
		}
	}); rerr != nil {
		return 0, rerr // closed
	}
	switch {
	case err == syscall.EAGAIN:
		return 0, errWouldBlock
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// waitSocket waits until a stream socket has data, its end or an error
// to read: MSG_PEEK of one byte, the netpoller between tries.
func waitSocket(rc syscall.RawConn) error {
	var one [1]byte
	var sockErr error
	err := rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			return false
		}
		sockErr = err
		return true
	})
	if sockErr != nil {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", sockErr)}
	}
	return err
}
