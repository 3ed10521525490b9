package stack

import "sync/atomic"

// Limits bound what a guest can make the stack hold on its behalf: every
// table a guest's packets can fill has one, and a flow refused at a limit
// is answered (a TCP RST or an ICMP error), never silently dropped. A zero
// field takes its default; docs/limits.md lists each one, its flag and
// what a client sees when it is hit.
type Limits struct {
	// Fields are added by the parts of the stack that enforce them.
}

// Refusal is why the stack refused or dropped something a guest sent; each
// has a counter (Stack.Refusals).
type Refusal int

const (
	// RefusedPolicy: a new flow the egress policy denies.
	RefusedPolicy Refusal = iota

	// refusalCount must stay last.
	refusalCount
)

// refusalNames are the counters' names in Stack.Refusals, indexed by
// Refusal; stable, since stats readers key on them.
var refusalNames = [refusalCount]string{
	RefusedPolicy: "policy",
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
