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
	if s.cfg.Plan.IPv6() && !s.cfg.DisableRA {
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
// the link MTU, and the advertised DNS servers and search list
// (fd00::3 when DNS is served, by default).
func (s *Stack) routerAdvert() []byte {
	// Options: source link-layer address, MTU, prefix information, RDNSS
	// (RFC 8106). gVisor has no type for the MTU option (RFC 4861 §4.6.4),
	// so it is written by hand between two serialized runs of the others.
	// gVisor's option types are the options' bodies and can only be read:
	// the bodies are filled in here, the serializer adds type, length and
	// padding.
	before := header.NDPOptionsSerializer{header.NDPSourceLinkLayerAddressOption(s.mac)}
	pi := make(header.NDPPrefixInformation, 30) // RFC 4861 §4.6.2 less type and length
	pi[0] = byte(s.cfg.Plan.Net6.Bits())
	pi[1] = 0xc0 // on-link (L) and autonomous (A)
	binary.BigEndian.PutUint32(pi[2:], raValidLifetime)
	binary.BigEndian.PutUint32(pi[6:], raPrefLifetime)
	copy(pi[14:], s.cfg.Plan.Net6.Addr().AsSlice())
	after := header.NDPOptionsSerializer{pi}
	adv := s.advertised()
	if o := rdnss(adv.DNS6); o != nil {
		after = append(after, o)
	}
	if o := dnssl(adv.Search); o != nil {
		after = append(after, o)
	}
	const mtuOptionSize = 8

	ra := header.ICMPv6(make([]byte, header.ICMPv6HeaderSize+header.NDPRAMinimumSize+before.Length()+mtuOptionSize+after.Length()))
	ra.SetType(header.ICMPv6RouterAdvert)
	// Nor can gVisor's NDPRouterAdvert be written: the fixed fields are
	// set here. Reachable time and retrans timer stay 0: unspecified.
	body := ra.MessageBody()
	body[0] = 64 // cur hop limit
	if s.dhcp6 != nil {
		// M: addresses are available with DHCPv6 (RFC 4861 §4.2), as
		// pasta's RAs say. No O: the configuration comes with them.
		body[1] = 0x80
	}
	binary.BigEndian.PutUint16(body[2:], raRouterLifetime)
	opts := body[header.NDPRAMinimumSize:]
	opts = opts[header.NDPOptions(opts).Serialize(before):]
	opts[0], opts[1] = 5, mtuOptionSize/8 // type, length in units of 8 bytes
	binary.BigEndian.PutUint32(opts[4:], s.cfg.MTU)
	header.NDPOptions(opts[mtuOptionSize:]).Serialize(after)

	ra.SetChecksum(icmpv6Checksum(s.cfg.Plan.Router6, allNodes, ra))
	return ipv6Packet(s.cfg.Plan.Router6, allNodes, header.ICMPv6ProtocolNumber, 255, ra)
}
