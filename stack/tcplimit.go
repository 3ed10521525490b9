package stack

import (
	"container/list"
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Bounds on the guest's TCP connections (Limits). A connection attempt is
// half-open from the guest's SYN until the guest completes its handshake:
// the host dial comes first (tcp.go), then gVisor's SYN-ACK. A guest that
// dials black-holed addresses, or floods SYNs and never answers the
// SYN-ACK, must not stop the next good connection, so:
//
//   - a destination (address and port) has at most TCPMaxDialsPerDest
//     dials in progress; a SYN beyond gets a RST at once (not the address
//     alone: every host service is behind the one gateway address);
//   - at TCPMaxHalfOpen attempts (or TCPMaxHalfOpenPerSource for one guest
//     address), a new SYN takes the slot of the oldest attempt, which is
//     reset: an attempt that has waited longest is the likeliest to be
//     stuck, and a good one completes long before a flood reaches it;
//   - the guest's handshake after the host dial has TCPHandshakeTimeout;
//   - established plus half-open connections are at most TCPMaxConns; a
//     SYN beyond gets a RST.
//
// Every refusal is a RST, never a silent drop: the guest's connect fails
// at once instead of retransmitting into a full table.

// The TCP limits' defaults (docs/limits.md says why).
const (
	DefaultTCPMaxConns             = 16384
	DefaultTCPMaxHalfOpen          = 1024
	DefaultTCPMaxHalfOpenPerSource = 1024
	DefaultTCPMaxDialsPerDest      = 256
	DefaultTCPHandshakeTimeout     = 10 * time.Second
)

// withTCPDefaults fills the zero TCP limits.
func (l Limits) withTCPDefaults() Limits {
	if l.TCPMaxConns <= 0 {
		l.TCPMaxConns = DefaultTCPMaxConns
	}
	if l.TCPMaxHalfOpen <= 0 {
		l.TCPMaxHalfOpen = DefaultTCPMaxHalfOpen
	}
	if l.TCPMaxHalfOpenPerSource <= 0 {
		l.TCPMaxHalfOpenPerSource = DefaultTCPMaxHalfOpenPerSource
	}
	if l.TCPMaxDialsPerDest <= 0 {
		l.TCPMaxDialsPerDest = DefaultTCPMaxDialsPerDest
	}
	if l.TCPHandshakeTimeout <= 0 {
		l.TCPHandshakeTimeout = DefaultTCPHandshakeTimeout
	}
	return l
}

// errEvicted is the cause of an attempt's context when a newer SYN took
// its slot.
var errEvicted = errors.New("half-open TCP attempt evicted by a newer one")

// tcpTable counts the guest's TCP connections and half-open attempts.
type tcpTable struct {
	lim     Limits
	refused *refusals

	mu    sync.Mutex
	conns int                       // guarded by mu; attempts and established
	all   list.List                 // guarded by mu; of *tcpAttempt, oldest first
	bySrc map[netip.Addr]*list.List // guarded by mu; of *tcpAttempt, oldest first
	dials map[netip.AddrPort]int    // guarded by mu; by destination
}

// tcpAttempt is one half-open attempt's slot. Its context ends when it is
// evicted; established drops it, as nothing waits on it after the
// handshake, and an idle flow would keep it (and the parent's record of
// it) for as long as it lasts.
type tcpAttempt struct {
	ctx    context.Context         // nil once established
	cancel context.CancelCauseFunc // guarded by tcpTable.mu once the attempt is in the table
	src    netip.Addr
	dst    netip.AddrPort

	// guarded by tcpTable.mu
	inAll, inSrc *list.Element // nil once the slot is gone
	dialing      bool
	conn         bool // holds one of conns
}

func newTCPTable(lim Limits, refused *refusals) *tcpTable {
	return &tcpTable{
		lim:     lim.withTCPDefaults(),
		refused: refused,
		bySrc:   make(map[netip.Addr]*list.List),
		dials:   make(map[netip.AddrPort]int),
	}
}

// admit makes room for a SYN from src to dst and returns its attempt, in
// its dial phase, or false (counted) when the SYN must be refused. ctx is
// the stack's.
func (t *tcpTable) admit(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*tcpAttempt, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns >= t.lim.TCPMaxConns {
		t.refused.add(TCPConnLimit)
		return nil, false
	}
	if t.dials[dst] >= t.lim.TCPMaxDialsPerDest {
		t.refused.add(TCPDestLimit)
		return nil, false
	}
	srcList := t.bySrc[src]
	if srcList != nil && srcList.Len() >= t.lim.TCPMaxHalfOpenPerSource {
		t.evictLocked(srcList.Front().Value.(*tcpAttempt), TCPSourceEvicted)
	}
	if t.all.Len() >= t.lim.TCPMaxHalfOpen {
		t.evictLocked(t.all.Front().Value.(*tcpAttempt), TCPHalfOpenEvicted)
	}
	if srcList == nil || t.bySrc[src] == nil {
		srcList = list.New()
		t.bySrc[src] = srcList
	}
	a := &tcpAttempt{src: src, dst: dst, dialing: true, conn: true}
	a.ctx, a.cancel = context.WithCancelCause(ctx)
	a.inAll = t.all.PushBack(a)
	a.inSrc = srcList.PushBack(a)
	t.dials[dst]++
	t.conns++
	return a, true
}

// evictLocked frees a's half-open slot at once and cancels it; its
// goroutine resets the guest and releases the rest.
func (t *tcpTable) evictLocked(a *tcpAttempt, why Refusal) {
	t.refused.add(why)
	t.dropHalfOpenLocked(a)
	a.cancel(errEvicted)
}

// dropHalfOpenLocked gives back a's half-open slot and its dial, if it
// still holds them.
func (t *tcpTable) dropHalfOpenLocked(a *tcpAttempt) {
	if a.dialing {
		a.dialing = false
		if t.dials[a.dst]--; t.dials[a.dst] <= 0 {
			delete(t.dials, a.dst)
		}
	}
	if a.inAll == nil {
		return
	}
	t.all.Remove(a.inAll)
	a.inAll = nil
	if l := t.bySrc[a.src]; l != nil {
		l.Remove(a.inSrc)
		if l.Len() == 0 {
			delete(t.bySrc, a.src)
		}
	}
	a.inSrc = nil
}

// dialed ends a's dial phase: its destination's count goes down.
func (t *tcpTable) dialed(a *tcpAttempt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a.dialing {
		a.dialing = false
		if t.dials[a.dst]--; t.dials[a.dst] <= 0 {
			delete(t.dials, a.dst)
		}
	}
}

// established ends a's half-open phase (if an eviction has not already)
// and releases its context: a must not use it after.
func (t *tcpTable) established(a *tcpAttempt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropHalfOpenLocked(a)
	a.releaseCtxLocked()
}

func (a *tcpAttempt) releaseCtxLocked() {
	if a.cancel != nil {
		a.cancel(nil)
	}
	a.ctx, a.cancel = nil, nil
}

// done gives back whatever a still holds: its half-open slot, and its
// connection once the connection has ended.
func (t *tcpTable) done(a *tcpAttempt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropHalfOpenLocked(a)
	if a.conn {
		a.conn = false
		t.conns--
	}
	a.releaseCtxLocked()
}

// counts returns the connections, the half-open attempts and the dials in
// progress (tests).
func (t *tcpTable) counts() (conns, halfOpen, dials int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.dials {
		dials += n
	}
	return t.conns, t.all.Len(), dials
}
