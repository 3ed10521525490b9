package stack

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// A guest's connection to a host the host cannot reach. When the host's
// connect fails with EHOSTUNREACH or ENETUNREACH, the guest gets the ICMP
// destination unreachable a router would have sent, so that its connect
// fails with the same error ("No route to host") rather than with a RST
// (ECONNREFUSED, "the host said no"). The guest's TCP accepts the ICMP
// error only if it quotes the SYN's sequence number, which gVisor's
// forwarder does not hand out: the link filter notes it (synTable) for the
// SYNs it lets through to the forwarder.

// synKey names a connection attempt as the guest sees it.
type synKey struct {
	src, dst netip.AddrPort
}

// synTable holds the initial sequence numbers of SYNs on their way to the
// forwarder, which takes each (handleTCP). A SYN the forwarder never sees
// (dropped with too many handshakes in flight, and not retransmitted)
// leaves its note behind; at maxSYNs notes the table starts afresh, and a
// dial that then finds no note answers with a RST, as without the table.
type synTable struct {
	n    atomic.Int64
	seqs sync.Map // synKey → uint32
}

const maxSYNs = 4096

func (t *synTable) note(k synKey, seq uint32) {
	if t.n.Load() >= maxSYNs {
		t.seqs.Clear()
		t.n.Store(0)
	}
	if _, loaded := t.seqs.Swap(k, seq); !loaded {
		t.n.Add(1)
	}
}

// take returns and forgets k's sequence number.
func (t *synTable) take(k synKey) (uint32, bool) {
	v, ok := t.seqs.LoadAndDelete(k)
	if !ok {
		return 0, false
	}
	t.n.Add(-1)
	return v.(uint32), true
}

// noteSYN records the sequence number of a guest's SYN to a foreign
// address (pkt is an IP packet whose TCP header starts at hl) for
// handleTCP. Our own addresses are never unreachable (the gateway's host
// side is the loopback), so their segments — most bulk traffic — are not
// even looked at, unless an egress policy may deny them.
func (s *Stack) noteSYN(pkt *gvstack.PacketBuffer, src, dst netip.Addr, hl int) {
	if s.cfg.Egress == nil && s.isOwn(dst) {
		return
	}
	b := peek(pkt, hl+header.TCPMinimumSize)
	if len(b) < hl+header.TCPMinimumSize {
		return
	}
	tcp := header.TCP(b[hl:])
	if f := tcp.Flags(); !f.Contains(header.TCPFlagSyn) || f.Contains(header.TCPFlagAck) {
		return
	}
	s.syns.note(synKey{netip.AddrPortFrom(src, tcp.SourcePort()), netip.AddrPortFrom(dst, tcp.DestinationPort())}, tcp.SequenceNumber())
}

// unreachableCode is the ICMP (ICMPv6) destination unreachable code for a
// failed host dial, or false when a RST is the right answer.
func unreachableCode(err error, v6 bool) (uint8, bool) {
	switch {
	case errors.Is(err, unix.EHOSTUNREACH) && v6:
		return uint8(header.ICMPv6AddressUnreachable), true
	case errors.Is(err, unix.EHOSTUNREACH):
		return uint8(header.ICMPv4HostUnreachable), true
	case errors.Is(err, unix.ENETUNREACH) && v6:
		return uint8(header.ICMPv6NetworkUnreachable), true
	case errors.Is(err, unix.ENETUNREACH):
		return uint8(header.ICMPv4NetUnreachable), true
	}
	return 0, false
}

// tcpUnreachable sends the guest at src the ICMP error for its SYN (with
// sequence number seq) to dst; false if it cannot (no link address).
func (s *Stack) tcpUnreachable(src, dst netip.AddrPort, seq uint32, code uint8) bool {
	mac := s.guestMAC(src.Addr())
	if mac == "" {
		return false
	}
	// The SYN's header as far as the guest checks it: ports and sequence
	// number (the rest, checksum included, stays 0).
	tcp := header.TCP(make([]byte, header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{
		SrcPort:    src.Port(),
		DstPort:    dst.Port(),
		SeqNum:     seq,
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagSyn,
	})
	var quote []byte
	if src.Addr().Is4() {
		quote = ipv4Packet(src.Addr(), dst.Addr(), header.TCPProtocolNumber, tcp)
	} else {
		quote = ipv6Packet(src.Addr(), dst.Addr(), header.TCPProtocolNumber, 64, tcp)
	}
	s.queue(outPacket{mac: mac, proto: protoOf(src.Addr()), data: dstUnreachable(dst.Addr(), src.Addr(), code, quote)})
	return true
}
