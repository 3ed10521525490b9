package stack

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// The bounds of the UDP tables (Limits.UDPFlows, UDPPorts, UDPBufferBytes).
// At a limit, the flows (or ports) that have been idle longest make room
// if they have been idle for defaultEvictIdle; otherwise the new flow is
// refused, and the guest gets ICMP administratively prohibited. Eviction
// goes in batches, and a search that found nothing to evict is not
// repeated for evictBackoff, so that a flood at the limit costs little.

const (
	// defaultEvictIdle is how long a flow (UDP or ping) must have been
	// quiet before a new flow may take its place: a request/response
	// exchange is over, and a flow that keeps talking (ping sends once a
	// second) is never cut by a scan.
	defaultEvictIdle = 5 * time.Second
	// evictBackoff is how long a search that found nothing to evict holds.
	evictBackoff = 100 * time.Millisecond
	// udpSmallRcvBuf is the receive buffer of a flow beyond the budget:
	// a datagram is always queued into an empty buffer, whatever its size.
	udpSmallRcvBuf = 16 << 10
)

// errUDPPortsFull: a new guest port beyond Limits.UDPPorts, none to evict.
var errUDPPortsFull = errors.New("too many UDP ports (--udp-sockets)")

// udpTable is the stack's UDP state: the guest ports' host sockets, the
// flows, and the counts the limits apply to.
type udpTable struct {
	maxFlows, maxPorts, bufBudget int
	evictIdle                     time.Duration
	epoch                         time.Time // for now

	mu         sync.Mutex
	ports      map[udpPortKey]*udpPort // guarded by mu
	flows      map[*udpFlow]struct{}   // started flows; guarded by mu
	slots      int                     // flows admitted and not ended or evicted; guarded by mu
	rcvGranted int                     // big receive buffers granted; guarded by mu
	// No eviction search before these (evictBackoff); guarded by mu.
	flowsFullUntil, portsFullUntil int64
}

func (t *udpTable) init(l Limits, evictIdle time.Duration) {
	t.evictIdle = evictIdle
	t.maxFlows, t.maxPorts, t.bufBudget = l.UDPFlows, l.UDPPorts, l.UDPBufferBytes
	t.epoch = time.Now()
	t.ports = make(map[udpPortKey]*udpPort)
	t.flows = make(map[*udpFlow]struct{})
}

// now is the monotonic time since init, for flows' last-traffic stamps.
func (t *udpTable) now() int64 { return int64(time.Since(t.epoch)) }

// reserveUDPFlow takes a flow slot, evicting idle flows at the limit;
// false means the flow is refused.
func (s *Stack) reserveUDPFlow() bool {
	ok, victims := s.udp.reserveFlow()
	s.closeFlows(victims)
	return ok
}

// reserveFlow takes a flow slot, evicting idle flows at the limit; false
// means the flow is refused. The caller closes the victims, whose slots
// are free already.
func (t *udpTable) reserveFlow() (bool, []*udpFlow) {
	t.mu.Lock()
	var victims []*udpFlow
	if t.slots >= t.maxFlows {
		victims = t.evictFlowsLocked()
	}
	ok := t.slots < t.maxFlows
	if ok {
		t.slots++
	}
	t.mu.Unlock()
	return ok, victims
}

func (t *udpTable) releaseSlot() {
	t.mu.Lock()
	t.slots--
	t.mu.Unlock()
}

// evictFlowsLocked frees the slots of a batch of the flows idle longest
// (at least evictIdle) and returns them, to be closed.
func (t *udpTable) evictFlowsLocked() []*udpFlow {
	now := t.now()
	if now < t.flowsFullUntil {
		return nil
	}
	var cands []*udpFlow
	for f := range t.flows {
		if f.slot.Load() && now-f.last.Load() >= int64(t.evictIdle) {
			cands = append(cands, f)
		}
	}
	if len(cands) == 0 {
		t.flowsFullUntil = now + int64(evictBackoff)
		return nil
	}
	slices.SortFunc(cands, func(a, b *udpFlow) int { return int(a.last.Load() - b.last.Load()) })
	cands = cands[:min(len(cands), max(1, t.maxFlows/32))]
	var victims []*udpFlow
	for _, f := range cands {
		if f.slot.Swap(false) {
			t.slots--
			victims = append(victims, f)
		}
	}
	return victims
}

// evictPortsLocked drops a batch of the ports whose flows have all been
// idle longest (at least evictIdle) from the table, frees their flows'
// slots and returns the flows, to be closed; each port's socket closes
// when its last flow has ended.
func (t *udpTable) evictPortsLocked() []*udpFlow {
	now := t.now()
	if now < t.portsFullUntil {
		return nil
	}
	type cand struct {
		p    *udpPort
		last int64
	}
	var cands []cand
	for _, p := range t.ports {
		p.mu.Lock()
		last := int64(-1)
		for _, f := range p.flows {
			last = max(last, f.last.Load())
		}
		p.mu.Unlock()
		if last >= 0 && now-last >= int64(t.evictIdle) {
			cands = append(cands, cand{p, last})
		}
	}
	if len(cands) == 0 {
		t.portsFullUntil = now + int64(evictBackoff)
		return nil
	}
	slices.SortFunc(cands, func(a, b cand) int { return int(a.last - b.last) })
	cands = cands[:min(len(cands), max(1, t.maxPorts/32))]
	var victims []*udpFlow
	for _, c := range cands {
		delete(t.ports, c.p.key)
		c.p.mu.Lock()
		for _, f := range c.p.flows {
			if f.slot.Swap(false) {
				t.slots--
			}
			victims = append(victims, f)
		}
		c.p.mu.Unlock()
	}
	return victims
}

// closeFlows closes evicted flows and counts them.
func (s *Stack) closeFlows(fs []*udpFlow) {
	for _, f := range fs {
		s.closeUDPFlow(f)
	}
	if len(fs) > 0 {
		s.refuse(EvictedUDPFlows, len(fs))
	}
}

// grantRcvBuf returns the receive buffer size for a new flow: udpRcvBuf
// while the budget lasts, else udpSmallRcvBuf. Pair with returnRcvBuf.
func (t *udpTable) grantRcvBuf() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.rcvGranted+udpRcvBuf <= t.bufBudget {
		t.rcvGranted += udpRcvBuf
		return udpRcvBuf
	}
	return udpSmallRcvBuf
}

func (t *udpTable) returnRcvBuf(n int) {
	if n != udpRcvBuf {
		return
	}
	t.mu.Lock()
	t.rcvGranted -= n
	t.mu.Unlock()
}
