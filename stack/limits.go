package stack

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/internal/ratelog"
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

	// UDPFlows bounds the UDP flows (guest port, remote) at once. A new
	// flow beyond it evicts the flow idle longest if that one has been
	// idle for 5 s, else it is refused with ICMP administratively
	// prohibited. Flows the host side starts are dropped instead.
	UDPFlows int
	// UDPPorts bounds the host UDP sockets, one per guest UDP port: the
	// host's ephemeral ports a guest can take. Evicted and refused as
	// UDPFlows.
	UDPPorts int
	// UDPBufferBytes bounds the receive buffers granted to UDP flows'
	// gVisor endpoints (memory is used only while datagrams queue): flows
	// beyond the budget get a small buffer.
	UDPBufferBytes int
	// UDPIdle is how long a UDP flow lives without traffic (DNS flows:
	// 15 s).
	UDPIdle time.Duration

	// PingFlows bounds the ICMP echo flows (guest address, destination,
	// identifier), each a host ping socket. Beyond it the flow idle
	// longest is evicted if idle for 5 s, else the request is refused
	// with ICMP administratively prohibited.
	PingFlows int

	// AllowSources are prefixes, besides the virtual network's own, that
	// the guest may send from (networks routed through the namespace).
	// Frames from any other source are dropped at the link filter, and
	// counted (they are not flows: nothing answers them).
	AllowSources []netip.Prefix
	// AnySource turns the source check off: frames from any address are
	// served, as pasta serves them (a host behind the namespace, such as
	// a container on a Podman bridge network without NAT, is answered;
	// see learnSender). The other limits still bound what such frames
	// can make the stack hold.
	AnySource bool
}

// Defaults of Limits.
const (
	defaultUDPFlows       = 4096
	defaultUDPPorts       = 1024
	defaultUDPBufferBytes = 64 << 20
	defaultUDPIdle        = 240 * time.Second
	defaultPingFlows      = 256
)

// withUDPDefaults fills the zero UDP, ping limits.
func (l Limits) withUDPDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.UDPFlows, defaultUDPFlows)
	def(&l.UDPPorts, defaultUDPPorts)
	def(&l.UDPBufferBytes, defaultUDPBufferBytes)
	def(&l.PingFlows, defaultPingFlows)
	if l.UDPIdle <= 0 {
		l.UDPIdle = defaultUDPIdle
	}
	return l
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

	// RefusedUDPFlows: a new UDP flow beyond Limits.UDPFlows.
	RefusedUDPFlows
	// RefusedUDPPorts: a new guest UDP port beyond Limits.UDPPorts.
	RefusedUDPPorts
	// EvictedUDPFlows: UDP flows ended early to make room for new ones.
	EvictedUDPFlows
	// RefusedPingFlows: a new ICMP echo flow beyond Limits.PingFlows.
	RefusedPingFlows
	// EvictedPingFlows: ping flows ended early to make room.
	EvictedPingFlows
	// SpoofedSource: a frame from a source outside the virtual network
	// (and Limits.AllowSources).
	SpoofedSource

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
	RefusedUDPFlows:     "udp_flows",
	RefusedUDPPorts:     "udp_ports",
	EvictedUDPFlows:     "udp_flows_evicted",
	RefusedPingFlows:    "ping_flows",
	EvictedPingFlows:    "ping_flows_evicted",
	SpoofedSource:       "spoofed_source",
}

// refusalLines are what the log says, at most once per refusalLogEvery
// for each reason, when the stack refuses something; "" logs nothing.
var refusalLines = [refusalCount]string{
	RefusedUDPFlows:  "refused a new UDP flow: too many (--udp-flows)",
	RefusedUDPPorts:  "refused a new UDP port: too many host UDP sockets (--udp-sockets)",
	EvictedUDPFlows:  "ended idle UDP flows early to make room (--udp-flows, --udp-sockets)",
	RefusedPingFlows: "refused a new ICMP echo flow: too many (--ping-flows)",
	EvictedPingFlows: "ended idle ICMP echo flows early to make room (--ping-flows)",
	SpoofedSource:    "dropped frames from a source outside the virtual network (--allow-source)",
}

// refusalLogEvery is how often each reason may be logged.
const refusalLogEvery = 10 * time.Second

// refuse counts n refusals for reason r, and logs it unless it was logged
// less than refusalLogEvery ago.
func (s *Stack) refuse(r Refusal, n int) {
	total := s.refused[r].Add(uint64(n))
	if refusalLines[r] != "" && s.refusalLog[r].Allow(refusalLogEvery) {
		s.logf("stack: %s; %s=%d so far", refusalLines[r], refusalNames[r], total)
	}
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

// refusalLogs limit the log lines of each reason (Stack.refuse).
type refusalLogs [refusalCount]ratelog.Every

// Refusals returns each reason's count since New, by name.
func (s *Stack) Refusals() map[string]uint64 {
	m := make(map[string]uint64, refusalCount)
	for i := range s.refused {
		m[refusalNames[i]] = s.refused[i].Load()
	}
	return m
}

// DefaultLimits returns the limits a zero Limits stands for.
func DefaultLimits() Limits { return Limits{}.withTCPDefaults().withUDPDefaults() }
