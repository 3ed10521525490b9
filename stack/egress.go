package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/usernet/usernet/policy"
)

// The egress policy (Config.Egress) is asked once per new flow, where the
// flow is made: handleTCP before the host dial, handleUDP before the
// flow's endpoint, forwardPing before the ping flow. It sees the address
// the host socket would reach (the gateway's mapping is 127.0.0.1), after
// route has kept the virtual network out. A denied flow is answered as a
// firewall would: ICMP "administratively prohibited", so that the guest's
// connect or send fails at once instead of timing out; TCP gets a RST
// instead with Config.EgressRST.

// egressDenied says whether the policy denies a new flow to hostDst (and
// counts it), and which rule decided (0: the default, or no policy).
func (s *Stack) egressDenied(proto policy.Proto, hostDst netip.AddrPort) (denied bool, rule int) {
	if s.cfg.Egress == nil {
		return false, 0
	}
	v := s.cfg.Egress.Check(proto, hostDst)
	if v.Allow {
		return false, v.RuleID
	}
	s.refused.add(RefusedPolicy)
	return true, v.RuleID
}

func prohibitedCode(v6 bool) uint8 {
	if v6 {
		return uint8(header.ICMPv6Prohibited)
	}
	return uint8(header.ICMPv4AdminProhibited)
}

// prohibitTCP answers a denied SYN (sequence number seq, if known) with
// ICMP; false means the caller's RST is the answer.
func (s *Stack) prohibitTCP(src, dst netip.AddrPort, seq uint32, haveSeq bool) bool {
	if s.cfg.EgressRST || !haveSeq {
		return false
	}
	return s.tcpUnreachable(src, dst, seq, prohibitedCode(dst.Addr().Is6()))
}

// prohibitUDP answers a denied datagram from src to dst (as the guest
// addressed it) with ICMP.
func (s *Stack) prohibitUDP(src, dst netip.AddrPort) {
	e := icmpError{v6: src.Addr().Is6(), code: prohibitedCode(src.Addr().Is6())}
	s.relayICMPError(e, src, dst)
}

// prohibitPing answers a denied echo request (the ICMP message icmp) from
// src to dst with ICMP, quoting it.
func (s *Stack) prohibitPing(src, dst netip.Addr, mac tcpip.LinkAddress, icmp []byte) {
	var quote []byte
	if src.Is4() {
		quote = ipv4Packet(src, dst, header.ICMPv4ProtocolNumber, icmp)
	} else {
		quote = ipv6Packet(src, dst, header.ICMPv6ProtocolNumber, 64, icmp)
	}
	s.queue(outPacket{mac: mac, proto: protoOf(src), data: dstUnreachable(dst, src, prohibitedCode(src.Is6()), quote)})
}
