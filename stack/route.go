package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// verdict is what to do with a flow from the namespace.
type verdict int

const (
	// forward: dial the returned host address.
	forward verdict = iota
	// reject: the destination is inside the virtual network (or otherwise
	// not ours to reach). TCP gets a RST; UDP is dropped.
	reject
	// silent: no answer at all, not even a RST (DNS:53 without ServeDNS,
	// as slirp4netns --disable-dns).
	silent
	// unreachable: ICMP destination unreachable, code "net unreachable"
	// (the gateway of a virtual network that maps no host loopback). Sent by the link filter,
	// which has the packet to quote; the forwarders treat it as reject.
	unreachable
)

func (v verdict) String() string {
	switch v {
	case forward:
		return "forward"
	case reject:
		return "reject"
	case silent:
		return "silent"
	case unreachable:
		return "unreachable"
	}
	return "verdict(?)"
}

var (
	hostLoopback4 = netip.MustParseAddr("127.0.0.1")
	hostLoopback6 = netip.IPv6Loopback()
)

// route decides where a TCP or UDP flow to dst goes. It is the single
// place that enforces the network rule: no address of the virtual network
// (Plan.Virtual), and no loopback, multicast, broadcast, unspecified,
// IPv4-mapped or link-local IPv6 address, is ever dialed on the host. Only
// the plan's host-loopback address is rewritten, to the host's loopback,
// and its guest alias, to the host's own address.
func (s *Stack) route(dst netip.AddrPort) (netip.AddrPort, verdict) {
	a := dst.Addr()
	if a.Is4In6() {
		// "::ffff:127.0.0.1" would reach the host's loopback through the
		// IPv6 socket API; nothing legitimate sends these on the wire.
		return netip.AddrPort{}, reject
	}
	plan := &s.cfg.Plan
	switch {
	case !a.IsValid():
		return netip.AddrPort{}, reject
	case a == plan.HostLoopback4:
		return netip.AddrPortFrom(hostLoopback4, dst.Port()), forward
	case a == plan.HostLoopback6:
		return netip.AddrPortFrom(hostLoopback6, dst.Port()), forward
	case a == plan.GuestAlias4 && plan.HostAddr4.IsValid():
		return netip.AddrPortFrom(plan.HostAddr4, dst.Port()), forward
	case a == plan.GuestAlias6 && plan.HostAddr6.IsValid():
		return netip.AddrPortFrom(plan.HostAddr6, dst.Port()), forward
	case (a == plan.Gateway4 || a == plan.Gateway6) && !plan.Mirrored(a):
		// slirp4netns --disable-host-loopback: the gateway is ours and
		// leads nowhere.
		return netip.AddrPort{}, unreachable
	case (a == plan.DNS4 || a == plan.DNS6) && dst.Port() == 53:
		// The DNS listeners, when there are any, took their packets
		// before the forwarders saw them.
		return netip.AddrPort{}, silent
	case plan.Virtual(a):
		return netip.AddrPort{}, reject
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(),
		a.IsLinkLocalUnicast() && a.Is6(), // needs a zone; never the host's business
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}),
		a.Is4() && a.As4()[0] == 0: // 0.0.0.0/8 "this network"
		return netip.AddrPort{}, reject
	}
	return dst, forward
}

// addrFrom converts a gVisor address to netip.
func addrFrom(a tcpip.Address) netip.Addr {
	switch a.Len() {
	case 4:
		return netip.AddrFrom4(a.As4())
	case 16:
		return netip.AddrFrom16(a.As16())
	}
	return netip.Addr{}
}

// tcpipAddr converts a netip address to gVisor's.
func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return header.IPv4ProtocolNumber
	}
	return header.IPv6ProtocolNumber
}

// isOwn reports whether a is one of the stack's own addresses, which the
// stack answers itself (ARP, neighbor discovery, echo).
func (s *Stack) isOwn(a netip.Addr) bool { return s.cfg.Plan.IsOwn(a) }
