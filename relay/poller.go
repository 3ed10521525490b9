package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller waits for many idle host sockets at once without a goroutine
// each: one epoll instance of its own (Go's poller watches the instance
// itself), which calls back the PolledConns that turn readable. Its owner
// runs Run on a goroutine and calls Close once none of its conns is in
// use any more.
type Poller struct {
	f  *os.File // the epoll instance
	rc syscall.RawConn

	mu    sync.Mutex
	conns map[uint64]*PolledConn // armed at least once, not closed
	next  uint64
	// dead: Run failed; callbacks are called at once (the relays then
	// wait on their goroutines, in turns).
	dead atomic.Bool
}

// Epoll makes an epoll instance of one's own, named name, that Go's poller
// serves (the Poller's; the stack's direct TCP path has one too): it is
// non-blocking, so os registers it, and a goroutine waits for its events
// by reading through the RawConn (epoll_wait with timeout 0 until it
// reports something). Closing the file closes the instance.
func Epoll(name string) (*os.File, syscall.RawConn, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("epoll instance non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("epoll instance: %w", err)
	}
	return f, rc, nil
}

// NewPoller makes a Poller.
func NewPoller() (*Poller, error) {
	f, rc, err := Epoll("relay-epoll")
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	return &Poller{f: f, rc: rc, conns: make(map[uint64]*PolledConn)}, nil
}

// Run calls back the conns that turn readable until ctx ends. The conns
// still work after: closing one calls its callback. If it fails, it calls
// every armed callback, and later ones are called at once.
func (p *Poller) Run(ctx context.Context) error {
	err := p.run(ctx)
	if err != nil {
		p.dead.Store(true)
		p.mu.Lock()
		armed := make([]*PolledConn, 0, len(p.conns))
		for _, c := range p.conns {
			armed = append(armed, c)
		}
		p.mu.Unlock()
		for _, c := range armed {
			c.fire()
		}
	}
	return err
}

func (p *Poller) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var evs [64]unix.EpollEvent
	var ready []*PolledConn
	for {
		var n int
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			for {
				n, werr = unix.EpollWait(int(fd), evs[:], 0)
				if werr != unix.EINTR {
					return werr != nil || n > 0
				}
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("relay: waiting for the epoll instance: %w", err)
		}
		if werr != nil {
			return fmt.Errorf("relay: epoll_wait: %w", werr)
		}
		p.mu.Lock()
		for _, ev := range evs[:n] {
			if c := p.conns[idOf(ev)]; c != nil {
				ready = append(ready, c)
			}
		}
		p.mu.Unlock()
		for _, c := range ready {
			c.fire()
		}
		clear(ready)
		ready = ready[:0]
	}
}

// Close closes the epoll instance.
func (p *Poller) Close() error { return p.f.Close() }

// Socket is a connected stream socket registered with Go's poller (a
// *net.TCPConn, or a socket the owner made itself): its SyscallConn's Read
// waits through Go's poller, and a read deadline interrupts that wait.
type Socket interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
	SetLinger(sec int) error
}

var _ Socket = (*net.TCPConn)(nil)

// Conn makes c a PolledConn of p. From then on c must be closed through
// the PolledConn only (directly, or through Abort): closing the socket
// underneath would leave an armed callback uncalled.
func (p *Poller) Conn(c Socket) (*PolledConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("relay: polled conn: %w", err)
	}
	p.mu.Lock()
	p.next++
	id := p.next
	p.mu.Unlock()
	return &PolledConn{Socket: c, p: p, rc: rc, id: id}, nil
}

// ctl runs epoll_ctl on p's instance for fd, the event's data being id.
func (p *Poller) ctl(op, fd int, id uint64, events uint32) error {
	var cerr error
	err := p.rc.Control(func(epfd uintptr) {
		ev := unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
		cerr = unix.EpollCtl(int(epfd), op, fd, &ev)
	})
	if err != nil {
		return err
	}
	return cerr
}

func idOf(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// PolledConn is a host TCP conn whose idle wait is its Poller's
// (ReadNotifier). Its other methods are the Socket's.
type PolledConn struct {
	Socket
	p  *Poller
	rc syscall.RawConn
	id uint64

	mu     sync.Mutex
	added  bool // in the epoll instance; guarded by mu
	closed bool // guarded by mu

	armed atomic.Bool
	f     func() // the armed callback: written before armed is set
}

var _ ReadNotifier = (*PolledConn)(nil)

// NotifyReadable implements ReadNotifier: a one-shot epoll registration
// (the kernel reports a socket that is already readable at once).
func (c *PolledConn) NotifyReadable(f func()) {
	c.f = f
	c.armed.Store(true)
	c.mu.Lock()
	err := net.ErrClosed
	if p := c.p; p.dead.Load() {
		err = errors.New("relay: poller failed")
	} else if !c.closed {
		op := unix.EPOLL_CTL_MOD
		if !c.added {
			op = unix.EPOLL_CTL_ADD
			c.p.mu.Lock()
			c.p.conns[c.id] = c
			c.p.mu.Unlock()
		}
		var cerr error
		err = c.rc.Control(func(fd uintptr) {
			cerr = c.p.ctl(op, int(fd), c.id, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLONESHOT)
		})
		if err == nil {
			err = cerr
		}
		if err == nil {
			c.added = true
		}
	}
	c.mu.Unlock()
	if err != nil {
		// Closed, or the Poller is gone: the relay reads and sees.
		c.fire()
	}
}

// WaitReadable implements ReadNotifier: Go's poller; InterruptWait sets
// a read deadline in the past.
func (c *PolledConn) WaitReadable() (bool, error) {
	err := waitSocket(c.rc)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.Socket.SetReadDeadline(time.Time{})
		return false, nil
	}
	return err == nil, err
}

// InterruptWait implements ReadNotifier.
func (c *PolledConn) InterruptWait() { c.Socket.SetReadDeadline(time.Unix(1, 0)) }

// ReadNow implements ReadNotifier.
func (c *PolledConn) ReadNow(p []byte) (int, error) { return readNow(c.rc, p) }

// Close closes the conn and calls an armed callback: epoll forgets a
// closed socket without a word.
func (c *PolledConn) Close() error {
	c.mu.Lock()
	if !c.closed && c.added {
		c.rc.Control(func(fd uintptr) { c.p.ctl(unix.EPOLL_CTL_DEL, int(fd), c.id, 0) })
	}
	c.closed = true
	c.mu.Unlock()
	c.p.mu.Lock()
	delete(c.p.conns, c.id)
	c.p.mu.Unlock()
	err := c.Socket.Close()
	c.fire()
	return err
}

// fire calls the armed callback, once.
func (c *PolledConn) fire() {
	if c.armed.CompareAndSwap(true, false) {
		c.f()
	}
}
