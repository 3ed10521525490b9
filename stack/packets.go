package stack

import (
	"net/netip"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// netUnreachable builds ICMP destination unreachable, code net unreachable
// (ICMPv6: no route to destination), from the gateway to src, quoting orig
// (the offending IP packet).
func (s *Stack) netUnreachable(src netip.Addr, orig []byte) []byte {
	if src.Is4() {
		return dstUnreachable(s.cfg.Plan.Gateway4, src, uint8(header.ICMPv4NetUnreachable), orig)
	}
	from := s.cfg.Plan.Gateway6
	if src.IsLinkLocalUnicast() {
		from = s.cfg.Plan.Router6
	}
	return dstUnreachable(from, src, uint8(header.ICMPv6NetworkUnreachable), orig)
}

// dstUnreachable builds an ICMP (ICMPv6 for IPv6 addresses) destination
// unreachable with code from from to to, quoting orig (the offending IP
// packet) as far as RFC 1812 / RFC 4443 allow.
func dstUnreachable(from, to netip.Addr, code uint8, orig []byte) []byte {
	if to.Is4() {
		orig = orig[:min(len(orig), 576-header.IPv4MinimumSize-header.ICMPv4MinimumSize)]
		icmp := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize+len(orig)))
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4Code(code))
		copy(icmp.Payload(), orig)
		// The whole message as the "header": the encoder sums all of it
		// but the checksum field.
		icmp.SetChecksum(header.ICMPv4Checksum(icmp, 0))
		return ipv4Packet(from, to, header.ICMPv4ProtocolNumber, icmp)
	}
	orig = orig[:min(len(orig), header.IPv6MinimumMTU-header.IPv6MinimumSize-header.ICMPv6MinimumSize-4)]
	icmp := header.ICMPv6(make([]byte, header.ICMPv6DstUnreachableMinimumSize+len(orig)))
	icmp.SetType(header.ICMPv6DstUnreachable)
	icmp.SetCode(header.ICMPv6Code(code))
	copy(icmp.Payload(), orig)
	icmp.SetChecksum(icmpv6Checksum(from, to, icmp))
	return ipv6Packet(from, to, header.ICMPv6ProtocolNumber, 64, icmp)
}

// icmpv6Checksum is the checksum of the ICMPv6 message icmp from src to
// dst. The whole message goes in as the "header": the encoder sums all of
// it but the checksum field.
func icmpv6Checksum(src, dst netip.Addr, icmp header.ICMPv6) uint16 {
	return header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: tcpipAddr(src), Dst: tcpipAddr(dst)})
}

// ipv4ID numbers the IPv4 packets we build; a packet quoted in an ICMP
// error takes one too.
var ipv4ID atomic.Uint32

// ipv4Packet prepends a 20-byte IPv4 header to payload: TTL 64, the next
// ID, no fragmentation flags.
func ipv4Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	p := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(p)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(p)),
		ID:          uint16(ipv4ID.Add(1)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpipAddr(src),
		DstAddr:     tcpipAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(p[header.IPv4MinimumSize:], payload)
	return p
}

// ipv6Packet prepends a 40-byte IPv6 header to payload.
func ipv6Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, hopLimit uint8, payload []byte) []byte {
	p := make([]byte, header.IPv6MinimumSize+len(payload))
	header.IPv6(p).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(payload)),
		TransportProtocol: proto,
		HopLimit:          hopLimit,
		SrcAddr:           tcpipAddr(src),
		DstAddr:           tcpipAddr(dst),
	})
	copy(p[header.IPv6MinimumSize:], payload)
	return p
}

// outPacket is an IP packet for the guest at mac.
type outPacket struct {
	mac   tcpip.LinkAddress
	proto tcpip.NetworkProtocolNumber
	data  []byte
}

// queue hands p to the control goroutine; it drops p when the queue is
// full, which rate-limits the ICMP errors the link filter generates.
func (s *Stack) queue(p outPacket) {
	select {
	case s.ctl <- p:
	default:
	}
}

// write sends p to the guest. It must not be called on the inbound path
// (see queue): with an in-memory link the write is delivered inline.
func (s *Stack) write(p outPacket) {
	if err := s.gv.WritePacketToRemote(nicID, p.mac, p.proto, buffer.MakeWithData(p.data)); err != nil && s.ctx.Err() == nil {
		s.logf("stack: write to the namespace: %v", err)
	}
}
