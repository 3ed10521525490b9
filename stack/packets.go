package stack

import (
	"encoding/binary"
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
		msg := make([]byte, header.ICMPv4MinimumSize+len(orig))
		msg[0], msg[1] = byte(header.ICMPv4DstUnreachable), code
		copy(msg[8:], orig)
		binary.BigEndian.PutUint16(msg[2:], fold(csum(0, msg)))
		return ipv4Packet(from, to, header.ICMPv4ProtocolNumber, msg)
	}
	orig = orig[:min(len(orig), header.IPv6MinimumMTU-header.IPv6MinimumSize-header.ICMPv6MinimumSize-4)]
	msg := make([]byte, 8+len(orig))
	msg[0], msg[1] = byte(header.ICMPv6DstUnreachable), code
	copy(msg[8:], orig)
	binary.BigEndian.PutUint16(msg[2:], fold(csum(pseudo6(from, to, header.ICMPv6ProtocolNumber, len(msg)), msg)))
	return ipv6Packet(from, to, header.ICMPv6ProtocolNumber, 64, msg)
}

var ipv4ID atomic.Uint32

// ipv4Packet prepends a 20-byte IPv4 header to payload.
func ipv4Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	p := make([]byte, header.IPv4MinimumSize+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], uint16(ipv4ID.Add(1)))
	p[8] = 64 // TTL
	p[9] = byte(proto)
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], fold(csum(0, p[:header.IPv4MinimumSize])))
	copy(p[header.IPv4MinimumSize:], payload)
	return p
}

// ipv6Packet prepends a 40-byte IPv6 header to payload.
func ipv6Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, hopLimit uint8, payload []byte) []byte {
	p := make([]byte, header.IPv6MinimumSize+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6] = byte(proto)
	p[7] = hopLimit
	s16, d16 := src.As16(), dst.As16()
	copy(p[8:], s16[:])
	copy(p[24:], d16[:])
	copy(p[header.IPv6MinimumSize:], payload)
	return p
}

// csum adds b to a ones' complement sum.
func csum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// fold finishes a ones' complement sum into a checksum.
func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudo6 is the sum of the IPv6 pseudo-header.
func pseudo6(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, length int) uint32 {
	s16, d16 := src.As16(), dst.As16()
	sum := csum(0, s16[:])
	sum = csum(sum, d16[:])
	return sum + uint32(length>>16) + uint32(length&0xffff) + uint32(proto)
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
