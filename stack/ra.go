package stack

import (
	"encoding/binary"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// gVisor's IPv6 implementation is a host, not a router: it never sends
// router advertisements. We build them ourselves (RFC 4861 §4.2) so that a
// Linux guest with accept_ra does SLAAC in fd00::/64 and gets a default
// route via fe80::2, as with slirp4netns --enable-ipv6.

const (
	raRouterLifetime = 1800 // seconds; 3 × MaxRtrAdvInterval (600 s)
	raValidLifetime  = 86400
	raPrefLifetime   = 14400
	raRDNSSLifetime  = 1800
)

// allNodesMAC is the Ethernet multicast address of ff02::1.
const allNodesMAC = tcpip.LinkAddress("\x33\x33\x00\x00\x00\x01")

var allNodes = netip.MustParseAddr("ff02::1")

// controlLoop runs for the Stack's lifetime: it writes the packets the
// link filter queued (ICMP errors) and sends router advertisements at
// start, periodically, and when the guest solicits one.
func (s *Stack) controlLoop() {
	var tick <-chan time.Time
	if s.cfg.Plan.IPv6() {
		s.sendRA()
		t := time.NewTicker(s.cfg.raInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case p := <-s.ctl:
			s.write(p)
		case <-s.raKick:
			s.sendRA()
		case <-tick:
			s.sendRA()
		}
	}
}

// kickRA asks the control loop for a router advertisement; requests made
// while one is pending coalesce.
func (s *Stack) kickRA() {
	select {
	case s.raKick <- struct{}{}:
	default:
	}
}

func (s *Stack) sendRA() {
	s.write(outPacket{mac: allNodesMAC, proto: header.IPv6ProtocolNumber, data: s.routerAdvert()})
}

// routerAdvert builds the RA packet: from fe80::2 to all nodes, hop limit
// 255, advertising us as default router, fd00::/64 on-link and for SLAAC,
// the link MTU, and fd00::3 as DNS server when DNS is served.
func (s *Stack) routerAdvert() []byte {
	ra := make([]byte, 0, 128)
	ra = append(ra,
		byte(header.ICMPv6RouterAdvert), 0, 0, 0, // type, code, checksum
		64, 0, // cur hop limit, flags (no M, no O)
		0, 0, // router lifetime
		0, 0, 0, 0, // reachable time: unspecified
		0, 0, 0, 0, // retrans timer: unspecified
	)
	binary.BigEndian.PutUint16(ra[6:], raRouterLifetime)

	// Source link-layer address.
	ra = append(ra, 1, 1)
	ra = append(ra, s.mac...)
	// MTU.
	ra = append(ra, 5, 1, 0, 0)
	ra = binary.BigEndian.AppendUint32(ra, s.cfg.MTU)
	// Prefix information: on-link (L) and autonomous (A).
	ra = append(ra, 3, 4, byte(s.cfg.Plan.Net6.Bits()), 0xc0)
	ra = binary.BigEndian.AppendUint32(ra, raValidLifetime)
	ra = binary.BigEndian.AppendUint32(ra, raPrefLifetime)
	ra = append(ra, 0, 0, 0, 0)
	p16 := s.cfg.Plan.Net6.Addr().As16()
	ra = append(ra, p16[:]...)
	// Recursive DNS server (RFC 8106).
	if s.cfg.ServeDNS != nil {
		ra = append(ra, 25, 3, 0, 0)
		ra = binary.BigEndian.AppendUint32(ra, raRDNSSLifetime)
		d16 := s.cfg.Plan.DNS6.As16()
		ra = append(ra, d16[:]...)
	}

	binary.BigEndian.PutUint16(ra[2:], fold(csum(pseudo6(s.cfg.Plan.Router6, allNodes, header.ICMPv6ProtocolNumber, len(ra)), ra)))
	return ipv6Packet(s.cfg.Plan.Router6, allNodes, header.ICMPv6ProtocolNumber, 255, ra)
}
