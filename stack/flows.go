package stack

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/link"
	"github.com/usernet/usernet/policy"
)

// The live flows, for list_connections, get_stats and the policy's
// kill_existing. A flow is registered where it is made (beside the
// egress check) and removed when it ends; its byte counters are updated
// by whatever moves its data, with one atomic add per read.

// flowRec is one live flow.
type flowRec struct {
	proto  policy.Proto
	guest  netip.AddrPort // the namespace's end
	remote netip.AddrPort // the destination as the guest addressed it
	host   netip.AddrPort // what the host socket reaches
	start  time.Time
	rule   int // the policy rule that allowed it; 0: the default or no policy
	// out and in count payload bytes guest → remote and back.
	out, in atomic.Uint64
	// kill ends the flow (a reset for TCP); set once at registration.
	kill func()
}

// flowSet holds the live flows.
type flowSet struct {
	mu    sync.Mutex
	m     map[*flowRec]struct{} // guarded by mu
	total [4]atomic.Uint64      // flows ever made, by policy.Proto
}

func (fs *flowSet) add(f *flowRec) {
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[*flowRec]struct{}{}
	}
	fs.m[f] = struct{}{}
	fs.mu.Unlock()
	fs.total[f.proto].Add(1)
}

func (fs *flowSet) remove(f *flowRec) {
	fs.mu.Lock()
	delete(fs.m, f)
	fs.mu.Unlock()
}

func (fs *flowSet) snapshot() []*flowRec {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make([]*flowRec, 0, len(fs.m))
	for f := range fs.m {
		out = append(out, f)
	}
	return out
}

// trackFlow registers a new flow; the caller calls untrackFlow when it ends.
func (s *Stack) trackFlow(proto policy.Proto, guest, remote, host netip.AddrPort, rule int, kill func()) *flowRec {
	f := newFlowRec(proto, guest, remote, host, rule, kill)
	s.live.add(f)
	return f
}

// newFlowRec is a flow's record not yet in the live set (s.live.add
// publishes it), for a flow that must be whole before kill may run.
func newFlowRec(proto policy.Proto, guest, remote, host netip.AddrPort, rule int, kill func()) *flowRec {
	return &flowRec{proto: proto, guest: guest, remote: remote, host: host, start: time.Now(), rule: rule, kill: kill}
}

func (s *Stack) untrackFlow(f *flowRec) {
	if f != nil {
		s.live.remove(f)
	}
}

// FlowInfo is one live flow, as list_connections shows it.
type FlowInfo struct {
	Proto    string  `json:"proto"`
	Guest    string  `json:"guest"`
	Remote   string  `json:"remote"`
	Host     string  `json:"host"`
	BytesOut uint64  `json:"bytes_out"` // guest → remote
	BytesIn  uint64  `json:"bytes_in"`
	Age      float64 `json:"age_s"`
	Rule     int     `json:"rule"` // the egress rule that allowed it; 0: the default, or no policy
}

// Connections lists the live flows, oldest first.
func (s *Stack) Connections() []FlowInfo {
	flows := s.live.snapshot()
	sort.Slice(flows, func(i, j int) bool { return flows[i].start.Before(flows[j].start) })
	now := time.Now()
	out := make([]FlowInfo, len(flows))
	for i, f := range flows {
		out[i] = FlowInfo{
			Proto: f.proto.String(), Guest: f.guest.String(), Remote: f.remote.String(), Host: f.host.String(),
			BytesOut: f.out.Load(), BytesIn: f.in.Load(),
			Age: now.Sub(f.start).Round(time.Millisecond).Seconds(), Rule: f.rule,
		}
	}
	return out
}

// KillDenied ends the live flows that the egress policy now denies and
// returns how many.
func (s *Stack) KillDenied() int {
	if s.cfg.Egress == nil {
		return 0
	}
	n := 0
	for _, f := range s.live.snapshot() {
		if f.kill != nil && !s.cfg.Egress.Check(f.proto, f.host).Allow {
			s.refused.add(RefusedPolicy)
			f.kill()
			n++
		}
	}
	return n
}

// Stats is what get_stats shows of the stack.
type Stats struct {
	// Frames and bytes on the tap: from the namespace (rx), to it (tx).
	Tap link.Counters `json:"tap"`
	// Flows alive now and made since start, by protocol.
	Flows      map[string]int    `json:"flows"`
	FlowsTotal map[string]uint64 `json:"flows_total"`
	// Refused counts what the stack refused or dropped, by reason.
	Refused map[string]uint64 `json:"refused"`
	// BadFrames are frames from the namespace gVisor found malformed;
	// HostErrors the host sockets of new flows that failed (a refused or
	// unreachable connect, no socket).
	BadFrames  uint64 `json:"bad_frames"`
	HostErrors uint64 `json:"host_errors"`
}

// Stats returns the counters now.
func (s *Stack) Stats() Stats {
	st := Stats{Flows: map[string]int{}, FlowsTotal: map[string]uint64{}, Refused: s.Refusals()}
	if s.counters != nil {
		st.Tap = s.counters()
	}
	gs := s.gv.Stats()
	st.BadFrames = gs.IP.MalformedPacketsReceived.Value() + gs.ARP.MalformedPacketsReceived.Value() + gs.UDP.MalformedPacketsReceived.Value() + gs.TCP.InvalidSegmentsReceived.Value()
	st.HostErrors = s.hostErrors.Load()
	for _, p := range []policy.Proto{policy.TCP, policy.UDP, policy.ICMP} {
		st.Flows[p.String()] = 0
		st.FlowsTotal[p.String()] = s.live.total[p].Load()
	}
	for _, f := range s.live.snapshot() {
		st.Flows[f.proto.String()]++
	}
	return st
}
