// Package relay is the one TCP relay of usernet: it copies a flow's bytes
// between two connections, both ways, and passes each side's end on to the
// other as that side ended it: a FIN as a half-close, a reset (or any other
// error) as a reset. The stack uses it for the namespace's outgoing flows
// (guest ↔ host socket) and portfwd for the port forwards (host client ↔
// guest); it owns the copy buffers of both.
//
// An idle direction holds neither a copy buffer nor a goroutine when its
// source is a ReadNotifier (the stack's gVisor-side conns, and host
// sockets wrapped as PolledConn by a Poller that the relays' owner runs).
//
// relay must not import gVisor or any usernet package: it sits below stack
// and portfwd, and sees their connections only as net.Conn, plus the
// optional CloseWrite, Aborter, SetLinger, DeepWriter and ReadNotifier
// methods.
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
	"time"
)

// Aborter is a connection that can be closed with a reset (RST) instead of
// a FIN, so that its peer's reads fail instead of ending cleanly. Abort
// closes the connection. Connections that cannot do it through SO_LINGER
// (the stack's gVisor-side conns) implement it.
type Aborter interface {
	Abort()
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

// ReadNotifier is a connection that can call back when it has something
// to read (data, its end, an error) instead of blocking a goroutine until
// then, so that an idle connection has no goroutine at all. A direction
// that has just copied keeps its goroutine a little while (parkFor), as
// the next bytes of a busy connection usually follow soon; then it arms
// the callback and its goroutine ends, and the callback starts a new one.
// The stack's gVisor-side conns implement it with their endpoint's waiter
// queue, PolledConn with a Poller's epoll.
//
// A relay reads each conn from one goroutine at a time only, so at most
// one callback is armed, or one wait under way, per conn.
type ReadNotifier interface {
	// NotifyReadable calls f once, when the conn has something to read
	// or is closed (by anyone: the relay's own end must wake it), possibly
	// at once, on the calling goroutine or another. f must not block.
	NotifyReadable(f func())
	// WaitReadable waits until the conn has something to read or is
	// closed (true), or InterruptWait is called (false; an interruption
	// that came before the wait may end it too, and false may come
	// spuriously). An error is the conn's, as a read would have returned
	// it.
	WaitReadable() (bool, error)
	// InterruptWait ends a WaitReadable under way, or the next one. It
	// may be called from any goroutine, at any time.
	InterruptWait()
	// ReadNow reads what the conn has without waiting: ErrWouldBlock when
	// it has nothing, io.EOF at its end.
	ReadNow(p []byte) (int, error)
}

// ErrWouldBlock is ReadNow's error when there is nothing to read.
var ErrWouldBlock = errors.New("relay: nothing to read")

// parkFor is how long a direction that has copied keeps its goroutine
// waiting for more before it waits without one. Longer than the gap
// between a request/response connection's packets, so that a busy
// connection does not start a goroutine for each; short, because the
// goroutines parked at a time, with their stacks, are those of the
// connections active in the last parkFor: a burst of new connections
// that then stay idle must not leave a stack each behind in the process's
// memory. Starting a goroutine for events further apart than this costs
// next to nothing beside them.
const parkFor = 10 * time.Millisecond

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
	done := make(chan struct{})
	Go(ctx, a, b, aToB, bToA, func() { close(done) })
	<-done
}

// Go is RunCounted without waiting: it returns at once, and calls done
// once the relay has ended and closed both conns, on the relay's last
// goroutine. A direction whose source is a ReadNotifier has a goroutine
// only while there is something to copy: a relay of two idle
// ReadNotifiers has none.
func Go(ctx context.Context, a, b net.Conn, aToB, bToA *atomic.Uint64, done func()) {
	r := &relayRun{ctx: ctx, a: a, b: b, done: done}
	r.left.Store(2)
	r.stop = context.AfterFunc(ctx, func() { r.end(true) })
	ab := newHalf(r, b, a, aToB)
	ba := newHalf(r, a, b, bToA)
	ab.start()
	ba.start()
}

// relayRun is one relay's state, shared by its two directions.
type relayRun struct {
	ctx  context.Context
	a, b net.Conn
	once sync.Once
	left atomic.Int32 // directions not yet done
	stop func() bool  // stops the ctx hook
	done func()
}

// end closes both conns once: gracefully after a clean exchange (both
// FINs have been passed on), with resets otherwise.
func (r *relayRun) end(abort bool) {
	r.once.Do(func() {
		if abort {
			Abort(r.a)
			Abort(r.b)
		} else {
			r.a.Close()
			r.b.Close()
		}
	})
}

// half is one direction of a relay: src to dst.
type half struct {
	r        *relayRun
	dst, src net.Conn
	s        source
	count    *atomic.Uint64
	large    bool   // a read filled the small buffer: use large ones
	wake     func() // NotifyReadable's callback: copy on a new goroutine
	// parkTimer interrupts the wait of a parked goroutine (park); set
	// while the direction has a goroutine that has parked.
	parkTimer *time.Timer
}

func newHalf(r *relayRun, dst, src net.Conn, count *atomic.Uint64) *half {
	h := &half{r: r, dst: dst, src: src, s: sourceOf(src), count: count}
	h.wake = func() { go h.run() }
	return h
}

// start starts the direction: a notifier source waits for its first
// bytes without a goroutine, other sources get one.
func (h *half) start() {
	if h.s.notifier != nil {
		h.s.notifier.NotifyReadable(h.wake)
		return
	}
	go h.run()
}

// run copies until src's end (passed on as dst's half-close), an error
// (aborts both conns, which also makes the other direction's blocked Read
// or Write return, or its callback come), or, for a notifier source, until
// src has been quiet for parkFor (park arms the callback).
func (h *half) run() {
	if d, ok := h.dst.(DeepWriter); ok {
		d.GrowStack()
	}
	for {
		err := copyAvailable(h.dst, h.s, h.count, &h.large)
		switch {
		case err == io.EOF:
			if cw, ok := h.dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() != nil {
				h.r.end(true)
			}
			h.finish()
			return
		case err != nil:
			h.r.end(true)
			h.finish()
			return
		}
		if h.s.notifier != nil {
			if !h.park() {
				return
			}
			continue
		}
		if h.s.wait != nil {
			if err := h.s.wait(); err != nil {
				h.r.end(true)
				h.finish()
				return
			}
		}
	}
}

// park waits, on the direction's goroutine, for the source's next bytes:
// true when there is something to read. Once the source has been quiet
// for parkFor, the direction goes on waiting without a goroutine (the
// source's callback), or it ends on an error or the end of ctx: false,
// and the goroutine must return.
//
// One timer per busy spell, not one per wait: setting a timer can wake
// the runtime's poller thread, and a request/response connection waits
// once per message.
func (h *half) park() bool {
	n := h.s.notifier
	last := time.Now() // bytes were just copied
	if h.parkTimer == nil {
		h.parkTimer = time.AfterFunc(parkFor, n.InterruptWait)
	}
	for {
		readable, err := n.WaitReadable()
		if err != nil || h.r.ctx.Err() != nil {
			h.r.end(true)
			h.finish()
			return false
		}
		if readable {
			return true
		}
		quiet := time.Since(last)
		if quiet < parkFor {
			h.parkTimer.Reset(parkFor - quiet) // an interruption for an earlier spell
			continue
		}
		// Idle: the timer has fired; wait without a goroutine.
		h.parkTimer = nil
		n.NotifyReadable(h.wake)
		return false
	}
}

// finish marks the direction done; the last one closes both conns and
// tells the relay's owner.
func (h *half) finish() {
	if h.parkTimer != nil {
		h.parkTimer.Stop()
		h.parkTimer = nil
	}
	if h.r.left.Add(-1) != 0 {
		return
	}
	h.r.end(false)
	h.r.stop()
	h.r.done()
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

// copyHalf copies src to dst until src's EOF (nil) or an error, waiting
// on the goroutine it runs on (the tests' view of one direction). Neither
// it nor half.run uses io.Copy: *net.TCPConn's
// ReadFrom and WriteTo would take over with buffers of their own,
// bypassing the ones above.
func copyHalf(dst io.Writer, src io.Reader, count *atomic.Uint64) error {
	s := sourceOf(src)
	if s.notifier != nil {
		s = source{read: src.Read}
	}
	large := false
	for {
		err := copyAvailable(dst, s, count, &large)
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
		if s.wait != nil {
			if err := s.wait(); err != nil {
				return err
			}
		}
	}
}

// copyAvailable copies what src has: it returns nil once src is drained,
// io.EOF at src's end, or an error. *large says whether to read into
// large buffers; a read that fills a small one sets it.
func copyAvailable(dst io.Writer, s source, count *atomic.Uint64, large *bool) error {
	pool := &smallBufs
	if *large {
		pool = &largeBufs
	}
	b := pool.Get().(*[]byte)
	buffersHeld.Add(1)
	defer func() { pool.Put(b); buffersHeld.Add(-1) }()
	for {
		n, rerr := s.read(*b)
		if rerr == ErrWouldBlock {
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
		if n < len(*b) && s.notifier != nil {
			// Probably drained: the wait finds out, without a read
			// that finds nothing.
			return nil
		}
		if n == len(*b) && pool == &smallBufs {
			pool.Put(b)
			pool = &largeBufs
			*large = true
			b = pool.Get().(*[]byte)
		}
	}
}

// source is how copyHalf reads a connection.
type source struct {
	// read reads what is there; it blocks, or, for a source with wait,
	// may return ErrWouldBlock.
	read func(p []byte) (int, error)
	// wait, when not nil, waits without a buffer until there is
	// something to read.
	wait func() error
	// notifier, when not nil, is the source as a ReadNotifier: the
	// direction waits through it (half.run), read never blocks.
	notifier ReadNotifier
}

func sourceOf(src io.Reader) source {
	switch c := src.(type) {
	case ReadNotifier:
		return source{read: c.ReadNow, notifier: c}
	case Socket: // a stream socket: MSG_PEEK and read(2) apply
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

// readNow reads what a stream socket has, without waiting: ErrWouldBlock
// when it has nothing, io.EOF at its end.
func readNow(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var err error
	// Control, not Read: a read deadline is PolledConn's way to
	// interrupt a wait, and must not fail a read.
	if rerr := rc.Control(func(fd uintptr) {
		for {
			n, err = syscall.Read(int(fd), p)
			if err != syscall.EINTR {
				return
			}
		}
	}); rerr != nil {
		return 0, rerr // closed
	}
	switch {
	case err == syscall.EAGAIN:
		return 0, ErrWouldBlock
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// waitSocket waits until a stream socket has data, its end or an error
// to read: MSG_PEEK of one byte, then the netpoller.
func waitSocket(rc syscall.RawConn) error {
	var one [1]byte
	var sockErr error
	woken := false
	err := rc.Read(func(fd uintptr) bool {
		if woken {
			// The poller saw the socket readable: the read that follows
			// finds what there is (rarely nothing: it then waits again),
			// without a peek first.
			return true
		}
		woken = true
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
