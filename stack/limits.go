package stack

import (
	"sync/atomic"
	"time"
)

// Limits bound what a guest can make the stack hold on its behalf: every
// table a guest's packets can fill has one, and a flow refused at a limit
// is answered (a TCP RST or an ICMP error), never silently dropped. A zero
// field takes its default; docs/limits.md lists each one, its flag and
// what a client sees when it is hit.
type Limits struct {
	// Fields are added by the parts of the stack that enforce them.

	// TCP (tcplimit.go). A connection attempt is half-open from the
	// guest's SYN until the guest completes its handshake: the host dial,
	// then gVisor's SYN-ACK and the guest's ACK.

	// TCPMaxConns bounds the guest's TCP connections, half-open and
	// established; a SYN beyond it gets a RST.
	TCPMaxConns int
	// TCPMaxHalfOpen bounds half-open attempts; at the limit a new SYN
	// takes the slot of the oldest attempt, which gets a RST.
	TCPMaxHalfOpen int
	// TCPMaxHalfOpenPerSource is the same bound for one guest address.
	TCPMaxHalfOpenPerSource int
	// TCPMaxDialsPerDest bounds host dials in progress to one destination
	// (address and port); a SYN beyond it gets a RST, so that a
	// black-holed destination holds at most this many slots.
	TCPMaxDialsPerDest int
	// TCPHandshakeTimeout bounds the guest's handshake once the host dial
	// has succeeded; then the host socket is closed and the guest reset.
	TCPHandshakeTimeout time.Duration
}

// Refusal is why the stack refused or dropped something a guest sent; each
// has a counter (Stack.Refusals).
type Refusal int

const (
	// RefusedPolicy: a new flow the egress policy denies.
	RefusedPolicy Refusal = iota

	// TCP (tcplimit.go).

	// TCPConnLimit: a SYN beyond Limits.TCPMaxConns, answered with a RST.
	TCPConnLimit
	// TCPHalfOpenEvicted: the oldest half-open attempt, reset to make room
	// for a new SYN at Limits.TCPMaxHalfOpen.
	TCPHalfOpenEvicted
	// TCPSourceEvicted: the same at Limits.TCPMaxHalfOpenPerSource.
	TCPSourceEvicted
	// TCPDestLimit: a SYN beyond Limits.TCPMaxDialsPerDest, answered with
	// a RST.
	TCPDestLimit
	// TCPHandshakeTimeout: a guest that did not complete its handshake
	// within Limits.TCPHandshakeTimeout, reset.
	TCPHandshakeTimeout

	// refusalCount must stay last.
	refusalCount
)

// refusalNames are the counters' names in Stack.Refusals, indexed by
// Refusal; stable, since stats readers key on them.
var refusalNames = [refusalCount]string{
	RefusedPolicy:       "policy",
	TCPConnLimit:        "tcp_conn_limit",
	TCPHalfOpenEvicted:  "tcp_half_open_evicted",
	TCPSourceEvicted:    "tcp_half_open_source_evicted",
	TCPDestLimit:        "tcp_dest_limit",
	TCPHandshakeTimeout: "tcp_handshake_timeout",
}

func (r Refusal) String() string {
	if r < 0 || r >= refusalCount {
		return "unknown"
	}
	return refusalNames[r]
}

// refusals counts refusals by reason; safe from any goroutine.
type refusals [refusalCount]atomic.Uint64

func (c *refusals) add(r Refusal) { c[r].Add(1) }

// Refusals returns each reason's count since New, by name.
func (s *Stack) Refusals() map[string]uint64 {
	m := make(map[string]uint64, refusalCount)
	for i := range s.refused {
		m[refusalNames[i]] = s.refused[i].Load()
	}
	return m
}
