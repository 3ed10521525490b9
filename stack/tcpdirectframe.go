package stack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// directHdr is a direct flow's frame headers towards the guest, made once
// at its SYN (as udpReply's): Ethernet, IP as gVisor writes it (IPv4 DF,
// ID 0, TTL 64; IPv6 hop limit 64), and TCP with the ports. Each segment
// copies it, fills in lengths, numbers and flags, and leaves the TCP
// checksum partial for the kernel (link.Tap.WritePartial).
type directHdr struct {
	b          [directHdrMax]byte
	n          int // Ethernet + IP + TCP without options
	ipAt       int
	tcpAt      int
	v6         bool
	ipSum      uint16 // IPv4: the header's sum with total length and checksum 0
	pseudo     uint16 // the pseudo-header's sum with length 0
	maxPayload int    // the MSS the MTU allows
}

func newDirectHdr(s *Stack, key directKey, mac [6]byte) directHdr {
	var h directHdr
	from, to := key.dst, key.src
	h.v6 = to.Addr().Is6()
	h.ipAt = header.EthernetMinimumSize
	ipLen := header.IPv4MinimumSize
	if h.v6 {
		ipLen = header.IPv6MinimumSize
	}
	h.tcpAt = h.ipAt + ipLen
	h.n = h.tcpAt + header.TCPMinimumSize
	h.maxPayload = int(s.cfg.MTU) - ipLen - header.TCPMinimumSize
	h.ipSum = s.encodeEthIP(h.b[:], mac, from.Addr(), to.Addr(), header.TCPProtocolNumber)
	binary.BigEndian.PutUint16(h.b[h.tcpAt:], from.Port())
	binary.BigEndian.PutUint16(h.b[h.tcpAt+2:], to.Port())
	h.pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpipAddr(from.Addr()), tcpipAddr(to.Addr()), 0)
	return h
}

// send writes the headers into frame, whose TCP options (optLen bytes)
// and payload are in place after h.n bytes, and sends it.
func (h *directHdr) send(s *Stack, frame []byte, optLen int, seq, ack uint32, flags header.TCPFlags, wnd uint16) {
	h.fill(frame, optLen, seq, ack, flags, wnd)
	// A frame the tap refuses is lost as on a wire; TCP recovers.
	s.tapLink.WritePartial(frame, h.tcpAt, 16)
}

// fill writes the headers into frame, as send.
func (h *directHdr) fill(frame []byte, optLen int, seq, ack uint32, flags header.TCPFlags, wnd uint16) {
	copy(frame, h.b[:h.n])
	tcpLen := len(frame) - h.tcpAt
	if h.v6 {
		binary.BigEndian.PutUint16(frame[h.ipAt+4:], uint16(tcpLen))
	} else {
		total := uint16(header.IPv4MinimumSize + tcpLen)
		binary.BigEndian.PutUint16(frame[h.ipAt+2:], total)
		binary.BigEndian.PutUint16(frame[h.ipAt+10:], ^checksum.Combine(h.ipSum, total))
	}
	t := frame[h.tcpAt:]
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = byte((header.TCPMinimumSize+optLen)/4) << 4
	t[13] = byte(flags)
	binary.BigEndian.PutUint16(t[14:], wnd)
	binary.BigEndian.PutUint16(t[16:], checksum.Combine(h.pseudo, uint16(tcpLen)))
	binary.BigEndian.PutUint16(t[18:], 0)
}

// gsoPayload is the most payload one GSO frame of segments of mss bytes
// carries: whole segments within IP's 16-bit length.
func (h *directHdr) gsoPayload(mss int) int {
	max := 0xffff - header.TCPMinimumSize
	if !h.v6 {
		max -= header.IPv4MinimumSize
	}
	return max / mss * mss
}

// segment sends a data segment: frame is h.n bytes of room and the payload.
func (h *directHdr) segment(s *Stack, frame []byte, seq, ack uint32, flags header.TCPFlags, wnd uint16) {
	h.send(s, frame, 0, seq, ack, flags, wnd)
}

// control sends a segment without data, with TCP options opts (a multiple
// of 4 bytes, at most 40).
func (h *directHdr) control(s *Stack, seq, ack uint32, flags header.TCPFlags, wnd uint16, opts []byte) {
	var b [directHdrMax + 40]byte
	copy(b[h.n:], opts)
	h.send(s, b[:h.n+len(opts)], len(opts), seq, ack, flags, wnd)
}
