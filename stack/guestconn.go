package stack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// guestConn is the guest's side of a forwarded flow, for relay: the
// endpoint itself, without gonet, whose TCPConn holds a deadline timer
// with two channels per connection that relay never sets, and cannot send
// a RST. One allocation with its waiter queue and readNotify: an idle
// flow's share of the heap is per connection.
type guestConn struct {
	wq waiter.Queue
	readNotify
}

var (
	_ net.Conn           = (*guestConn)(nil)
	_ relay.Aborter      = (*guestConn)(nil)
	_ relay.ReadNotifier = (*guestConn)(nil)
	_ relay.DeepWriter   = (*guestConn)(nil)
)

// init makes c the conn of ep, whose waiter queue is c.wq.
func (c *guestConn) init(ep tcpip.Endpoint) { c.readNotify.init(ep, &c.wq) }

// GrowStack implements relay.DeepWriter: a write goes through gVisor's
// send path down to the tap.
func (*guestConn) GrowStack() { growStack() }

// Abort implements relay.Aborter: RST to the guest.
func (c *guestConn) Abort() {
	c.ep.Abort()
	c.ep.Close()
}

// Close implements net.Conn: FIN to the guest (the endpoint lingers in
// gVisor until the close completes).
func (c *guestConn) Close() error {
	c.ep.Close()
	return nil
}

// CloseWrite sends FIN, the relay's half-close.
func (c *guestConn) CloseWrite() error {
	if err := c.ep.Shutdown(tcpip.ShutdownWrite); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// Read implements net.Conn; relay reads through ReadNow.
func (c *guestConn) Read(p []byte) (int, error) {
	for {
		n, err := c.ReadNow(p)
		if err != relay.ErrWouldBlock {
			return n, err
		}
		if _, err := c.WaitReadable(); err != nil {
			return 0, err
		}
	}
}

// Write implements net.Conn: it waits for room in the send buffer as long
// as it takes, until the endpoint is closed or reset (Abort, from the
// relay's other direction or its end).
func (c *guestConn) Write(p []byte) (int, error) {
	var (
		r      bytes.Reader
		n      int
		w      writeWait
		listen bool
	)
	for n < len(p) {
		r.Reset(p[n:])
		m, err := c.ep.Write(&r, tcpip.WriteOptions{})
		n += int(m)
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			if !listen {
				// Registered before the wait, then tried again: room
				// made in between is not missed.
				w.ch = make(chan struct{}, 1)
				w.entry.Init(&w, waiter.WritableEvents|waiter.EventHUp|waiter.EventErr)
				c.wq.EventRegister(&w.entry)
				defer c.wq.EventUnregister(&w.entry)
				listen = true
				continue
			}
			<-w.ch
		default:
			return n, c.opError("write", err)
		}
	}
	return n, nil
}

// writeWait is a blocked Write's waiter entry.
type writeWait struct {
	entry waiter.Entry
	ch    chan struct{}
}

// NotifyEvent implements waiter.EventListener.
func (w *writeWait) NotifyEvent(waiter.EventMask) {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// LocalAddr implements net.Conn.
func (c *guestConn) LocalAddr() net.Addr {
	a, err := c.ep.GetLocalAddress()
	if err != nil {
		return nil
	}
	return tcpAddrOf(a)
}

// RemoteAddr implements net.Conn.
func (c *guestConn) RemoteAddr() net.Addr {
	a, err := c.ep.GetRemoteAddress()
	if err != nil {
		return nil
	}
	return tcpAddrOf(a)
}

// errNoDeadlines: relay waits without deadlines; it interrupts a wait
// with InterruptWait and a write with Abort.
var errNoDeadlines = errors.New("deadlines not supported on a relayed guest connection")

// SetDeadline implements net.Conn: not supported.
func (*guestConn) SetDeadline(time.Time) error { return errNoDeadlines }

// SetReadDeadline implements net.Conn: not supported.
func (*guestConn) SetReadDeadline(time.Time) error { return errNoDeadlines }

// SetWriteDeadline implements net.Conn: not supported.
func (*guestConn) SetWriteDeadline(time.Time) error { return errNoDeadlines }

func (c *guestConn) opError(op string, err tcpip.Error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errors.New(err.String())}
}

func tcpAddrOf(a tcpip.FullAddress) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// readNotify is relay.ReadNotifier for a gVisor TCP endpoint: a waiter
// entry that stays registered on the endpoint's queue and calls the armed
// callback. Closing or aborting the endpoint notifies the queue.
//
// WaitReadable's entry and InterruptWait share one channel; an
// interruption also sets interrupted, so that one that comes before the
// wait (the relay's park timer firing while it copies) ends the next wait
// rather than being drained with a stale wake.
type readNotify struct {
	ep         tcpip.Endpoint
	wq         *waiter.Queue
	entry      waiter.Entry // NotifyReadable's: calls f
	registered bool         // entry is on wq; only the relay's reader touches it
	armed      atomic.Bool
	f          func() // the armed callback: written before armed is set

	// waitEntry is WaitReadable's, registered while the relay's
	// goroutine waits on wake.
	waitEntry   waiter.Entry
	wake        chan struct{}
	interrupted atomic.Bool
}

const readNotifyEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

func newReadNotify(ep tcpip.Endpoint, wq *waiter.Queue) *readNotify {
	n := new(readNotify)
	n.init(ep, wq)
	return n
}

func (n *readNotify) init(ep tcpip.Endpoint, wq *waiter.Queue) {
	n.ep, n.wq = ep, wq
	n.wake = make(chan struct{}, 1)
	n.entry.Init((*armedListener)(n), readNotifyEvents)
	n.waitEntry.Init((*waitListener)(n), readNotifyEvents)
}

// armedListener calls the armed callback. gVisor calls it under the
// endpoint's lock: the callback only starts the relay's goroutine.
type armedListener readNotify

// NotifyEvent implements waiter.EventListener.
func (l *armedListener) NotifyEvent(waiter.EventMask) { (*readNotify)(l).fire() }

// waitListener wakes WaitReadable.
type waitListener readNotify

// NotifyEvent implements waiter.EventListener.
func (l *waitListener) NotifyEvent(waiter.EventMask) { (*readNotify)(l).signal() }

func (n *readNotify) signal() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// WaitReadable implements relay.ReadNotifier.
func (n *readNotify) WaitReadable() (bool, error) {
	// A wake left from an earlier wait (one that found the endpoint
	// readable at once) would end this one for nothing; an interruption
	// is not lost with it (interrupted).
	select {
	case <-n.wake:
	default:
	}
	n.wq.EventRegister(&n.waitEntry)
	defer n.wq.EventUnregister(&n.waitEntry)
	if n.ep.Readiness(readNotifyEvents) != 0 {
		return true, nil
	}
	if n.interrupted.Swap(false) {
		return false, nil
	}
	<-n.wake
	if n.ep.Readiness(readNotifyEvents) != 0 {
		return true, nil
	}
	n.interrupted.Store(false)
	return false, nil
}

// InterruptWait implements relay.ReadNotifier.
func (n *readNotify) InterruptWait() {
	n.interrupted.Store(true)
	n.signal()
}

// NotifyReadable implements relay.ReadNotifier.
func (n *readNotify) NotifyReadable(f func()) {
	n.f = f
	n.armed.Store(true)
	if !n.registered {
		n.wq.EventRegister(&n.entry)
		n.registered = true
	}
	if n.ep.Readiness(readNotifyEvents) != 0 {
		n.fire()
	}
}

func (n *readNotify) fire() {
	if n.armed.CompareAndSwap(true, false) {
		n.f()
	}
}

// ReadNow implements relay.ReadNotifier: gonet's Read without its wait.
func (n *readNotify) ReadNow(p []byte) (int, error) {
	w := tcpip.SliceWriter(p)
	res, err := n.ep.Read(&w, tcpip.ReadOptions{})
	switch err.(type) {
	case nil:
	case *tcpip.ErrWouldBlock:
		return 0, relay.ErrWouldBlock
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF
	default:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: errors.New(err.String())}
	}
	if res.Count != 0 {
		n.ep.ModerateRecvBuf(res.Count)
	}
	return res.Count, nil
}
