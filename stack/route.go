package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
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
	// (the gateway with DisableHostLoopback). Sent by the link filter,
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
// place that enforces the network rule (NOTES.md §4): no address of the
// virtual network, and no loopback, multicast, broadcast, unspecified,
// IPv4-mapped or link-local IPv6 address, is ever dialed on the host. Only
// the gateway is rewritten, to the host's loopback.
func (s *Stack) route(dst netip.AddrPort) (netip.AddrPort, verdict) {
	a := dst.Addr()
	if a.Is4In6() {
		// "::ffff:127.0.0.1" would reach the host's loopback through the
		// IPv6 socket API; nothing legitimate sends these on the wire.
		return netip.AddrPort{}, reject
	}
	switch {
	case a == s.gw4 || (s.gw6.IsValid() && a == s.gw6):
		if s.cfg.DisableHostLoopback {
			return netip.AddrPort{}, unreachable
		}
		lo := hostLoopback4
		if a.Is6() {
			lo = hostLoopback6
		}
		return netip.AddrPortFrom(lo, dst.Port()), forward
	case a == s.dns4 || (s.dns6.IsValid() && a == s.dns6):
		// The DNS listeners, when there are any, took their packets
		// before the forwarders saw them.
		if dst.Port() == 53 {
			return netip.AddrPort{}, silent
		}
		return netip.AddrPort{}, reject
	case s.net4.Contains(a), s.net6.IsValid() && s.net6.Contains(a):
		return netip.AddrPort{}, reject
	case !a.IsValid(), a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(),
		a.IsLinkLocalUnicast() && a.Is6(), // needs a zone; never the host's business
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}),
		a.Is4() && a.As4()[0] == 0: // 0.0.0.0/8 "this network"
		return netip.AddrPort{}, reject
	}
	return dst, forward
}

// dialHost opens the host socket for one flow. network is "tcp", "ping4"
// or "ping6" (an unprivileged ICMP echo socket, port ignored); UDP flows
// use openHostUDP.
// Host sockets are bound to OutboundAddr/OutboundAddr6 when set, except for
// loopback destinations (the gateway mapping), which must stay on lo.
func (s *Stack) dialHost(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	if s.cfg.dial != nil {
		return s.cfg.dial(ctx, network, dst)
	}
	var local netip.Addr
	if !dst.Addr().IsLoopback() {
		if dst.Addr().Is4() {
			local = s.cfg.OutboundAddr.Unmap()
		} else {
			local = s.cfg.OutboundAddr6
		}
	}
	switch network {
	case "ping4", "ping6":
		return dialPing(dst.Addr(), local)
	}
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	if !local.IsValid() {
		// No local address: the kernel picks the port at connect(2), which
		// lets connections to different destinations share a port. The
		// typed DialTCP below cannot say "no local address" (a zero
		// AddrPort still becomes a bind to 0.0.0.0:0, and every such bind
		// takes a port of its own: 28k connections, TIME_WAIT included, and
		// the host runs out; TestDialHostSharesEphemeralPorts).
		return d.DialContext(ctx, network, dst.String())
	}
	laddr := netip.AddrPortFrom(local, 0)
	if network == "tcp" {
		// Bound to an address, still leave the port to connect(2)
		// (IP_BIND_ADDRESS_NO_PORT), for the same reason.
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("setsockopt IP_BIND_ADDRESS_NO_PORT: %w", serr)
			}
			return nil
		}
	}
	// DialTCP takes the addresses as they are: no string to format and
	// parse again, no resolver, no dialParallel. On error it returns a
	// typed nil, which must not become a non-nil net.Conn.
	switch network {
	case "tcp":
		c, err := d.DialTCP(ctx, network, laddr, dst)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return nil, fmt.Errorf("dial %s %v: unknown network", network, dst)
}

// openHostUDP opens the host socket of a guest UDP port (udpPort): not
// connected, with IP_RECVERR, bound to the host's loopback address for
// flows to the gateway (nothing but local processes can reach it then),
// else to OutboundAddr/OutboundAddr6 when set, else to the wildcard address
// (as slirp4netns). A test's dialer (Config.dial) makes a connected one for
// k.dst.
func (s *Stack) openHostUDP(ctx context.Context, k udpPortKey) (*udpHost, error) {
	if s.cfg.dial != nil {
		c, err := s.cfg.dial(ctx, "udp", k.dst)
		if err != nil {
			return nil, err
		}
		return &udpHost{c: c, dst: k.dst}, nil
	}
	v6 := k.src.Addr().Is6()
	network, local := "udp4", netip.IPv4Unspecified()
	if v6 {
		network, local = "udp6", netip.IPv6Unspecified()
	}
	switch {
	case k.loopback && v6:
		local = hostLoopback6
	case k.loopback:
		local = hostLoopback4
	case !v6 && s.cfg.OutboundAddr.IsValid():
		local = s.cfg.OutboundAddr.Unmap()
	case v6 && s.cfg.OutboundAddr6.IsValid():
		local = s.cfg.OutboundAddr6
	}
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, fmt.Errorf("udp socket for %v: %w", k.src, err)
	}
	rc, err := pc.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) { serr = setRecvErr(int(fd), v6) })
		err = errors.Join(err, serr)
	}
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("udp socket for %v: IP_RECVERR: %w", k.src, err)
	}
	return &udpHost{pc: pc, rc: rc}, nil
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
func (s *Stack) isOwn(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	return a == s.gw4 || a == s.dns4 ||
		(s.gw6.IsValid() && (a == s.gw6 || a == s.dns6 || a == s.router6))
}
