package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// The UDP reply fast path, the mirror of udpfast.go. A datagram from the
// host for a flow goes to the guest as a frame built here: the flow's
// Ethernet, IP and UDP headers are made once, when the fast path first
// takes one of the guest's datagrams (which names the guest's MAC), and
// each reply copies them in front of its payload, fills in the lengths
// and the IPv4 header checksum, and goes to link.Tap with a partial UDP
// checksum (the kernel completes it, or link.Tap does without offloads).
// Through gVisor each reply cost the endpoint's write path (route,
// header building, the iptables hooks, the checksum of the payload) and a
// copy into a packet buffer.
//
// The headers are those gVisor writes for the flow's endpoint: IPv4 with
// DF set and ID 0, TOS 0, TTL 64; IPv6 with traffic class and flow label 0,
// hop limit 64 (TestUDPReplyFastFrames compares them). Everything else
// goes through gVisor as before: replies before the guest's first fast
// datagram (and host-first flows until the guest answers), replies too
// large for the MTU (gVisor fragments them), flows to broadcast or
// multicast addresses, and every reply when the link is not a link.Tap.

// replyHeadroom is the room readUDPPort leaves before each datagram from
// the host for the reply frame's headers: Ethernet, IPv6 (the larger),
// UDP.
const replyHeadroom = header.EthernetMinimumSize + header.IPv6MinimumSize + header.UDPMinimumSize

// udpReply is a flow's reply headers, made once (learnReply).
type udpReply struct {
	hdr        [replyHeadroom]byte // the headers, at its end: hdr[replyHeadroom-n:]
	n          int                 // their length
	v6         bool
	ipSum      uint16 // IPv4: the header's sum with total length and checksum 0
	pseudo     uint16 // the UDP pseudo-header's sum with length 0
	maxPayload int    // larger replies are fragmented by gVisor
	mac        [6]byte
}

// replyable reports whether a reply may be made here from or to a: a
// unicast address.
func replyable(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// noteGuestMAC is called by udpFastSend for each datagram of the flow it
// takes, with the frame's Ethernet header: the first (or one from a new
// MAC) makes the flow's reply headers.
func (s *Stack) noteGuestMAC(f *udpFastFlow, eth []byte) {
	if s.tapLink == nil || len(eth) < header.EthernetMinimumSize {
		return
	}
	src := eth[6:12]
	if r := f.reply.Load(); r != nil && bytes.Equal(r.mac[:], src) {
		return
	}
	s.learnReply(f, [6]byte(src))
}

// learnReply makes and publishes f's reply headers for the guest at mac.
func (s *Stack) learnReply(f *udpFastFlow, mac [6]byte) {
	from, to := f.visible, f.guest
	if !replyable(from.Addr()) || !replyable(to.Addr()) || from.Addr().Is6() != to.Addr().Is6() || len(s.mac) != 6 {
		return
	}
	r := &udpReply{v6: to.Addr().Is6(), mac: mac}
	ipLen := header.IPv4MinimumSize
	if r.v6 {
		ipLen = header.IPv6MinimumSize
	}
	r.n = header.EthernetMinimumSize + ipLen + header.UDPMinimumSize
	r.maxPayload = int(s.cfg.MTU) - ipLen - header.UDPMinimumSize
	h := r.hdr[replyHeadroom-r.n:]
	r.ipSum = s.encodeEthIP(h, mac, from.Addr(), to.Addr(), header.UDPProtocolNumber)
	header.UDP(h[header.EthernetMinimumSize+ipLen:]).Encode(&header.UDPFields{SrcPort: from.Port(), DstPort: to.Port()})
	r.pseudo = header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpipAddr(from.Addr()), tcpipAddr(to.Addr()), 0)
	f.reply.Store(r)
	if f.closed.Load() {
		// The flow ended meanwhile (udpFastFlow.close).
		f.reply.Store(nil)
	}
}

// replyFast writes a datagram from the host to the guest as a frame of
// its own making and reports true, or false if gVisor must (no headers
// yet, too large). buf is the datagram after replyHeadroom bytes of room.
func (s *Stack) replyFast(f *udpFastFlow, buf []byte) bool {
	if f == nil {
		return false
	}
	r := f.reply.Load()
	if r == nil {
		return false
	}
	n := len(buf) - replyHeadroom
	if n > r.maxPayload {
		return false
	}
	frame := buf[replyHeadroom-r.n:]
	copy(frame, r.hdr[replyHeadroom-r.n:])
	udpLen := uint16(header.UDPMinimumSize + n)
	udpAt := header.EthernetMinimumSize + header.IPv4MinimumSize
	if r.v6 {
		udpAt = header.EthernetMinimumSize + header.IPv6MinimumSize
		binary.BigEndian.PutUint16(frame[header.EthernetMinimumSize+4:], udpLen) // payload length
	} else {
		total := header.IPv4MinimumSize + udpLen
		binary.BigEndian.PutUint16(frame[header.EthernetMinimumSize+2:], total)
		binary.BigEndian.PutUint16(frame[header.EthernetMinimumSize+10:], ^checksum.Combine(r.ipSum, total))
	}
	binary.BigEndian.PutUint16(frame[udpAt+4:], udpLen)
	binary.BigEndian.PutUint16(frame[udpAt+6:], checksum.Combine(r.pseudo, udpLen))
	// A frame the tap refuses is lost as on a wire.
	s.tapLink.WritePartial(frame, udpAt, 6)
	return true
}

func tcpipLinkAddr(mac [6]byte) tcpip.LinkAddress { return tcpip.LinkAddress(mac[:]) }

// encodeEthIP writes the Ethernet header of a frame from the Stack to the
// guest at mac into b, and the IP header after it as gVisor writes one
// (IPv4: DF, ID 0, TTL 64, lengths and checksum left 0; IPv6: hop limit
// 64, payload length 0): the frames built outside gVisor (UDP replies,
// the direct TCP path) fill in lengths per packet. It returns the IPv4
// header's sum, to be combined with the total length (0 for IPv6).
func (s *Stack) encodeEthIP(b []byte, mac [6]byte, from, to netip.Addr, proto tcpip.TransportProtocolNumber) uint16 {
	eth := header.Ethernet(b)
	ip := b[header.EthernetMinimumSize:]
	src, dst := tcpipAddr(from), tcpipAddr(to)
	if to.Is6() {
		eth.Encode(&header.EthernetFields{SrcAddr: s.mac, DstAddr: tcpipLinkAddr(mac), Type: header.IPv6ProtocolNumber})
		header.IPv6(ip).Encode(&header.IPv6Fields{
			TransportProtocol: proto,
			HopLimit:          ipv6.DefaultTTL,
			SrcAddr:           src,
			DstAddr:           dst,
		})
		return 0
	}
	eth.Encode(&header.EthernetFields{SrcAddr: s.mac, DstAddr: tcpipLinkAddr(mac), Type: header.IPv4ProtocolNumber})
	v4 := header.IPv4(ip)
	v4.Encode(&header.IPv4Fields{
		TTL:      ipv4.DefaultTTL,
		Flags:    header.IPv4FlagDontFragment,
		Protocol: uint8(proto),
		SrcAddr:  src,
		DstAddr:  dst,
	})
	return v4.CalculateChecksum()
}
