package stack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// frameLog is a link.Capture that keeps every frame.
type frameLog struct {
	mu     sync.Mutex
	frames [][]byte
}

func (l *frameLog) WriteFrame(parts ...[]byte) {
	f := bytes.Join(parts, nil)
	l.mu.Lock()
	l.frames = append(l.frames, f)
	l.mu.Unlock()
}

func (l *frameLog) all() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.frames...)
}

// udpFrame is one captured UDP frame, taken apart.
type udpFrame struct {
	frame    []byte
	ip       []byte // the IP header
	udp      header.UDP
	src, dst netip.AddrPort
}

// parseUDPFrame takes an Ethernet frame with IPv4 or IPv6 (no extension
// headers) and UDP apart; false for anything else.
func parseUDPFrame(f []byte) (udpFrame, bool) {
	if len(f) < header.EthernetMinimumSize {
		return udpFrame{}, false
	}
	p := f[header.EthernetMinimumSize:]
	u := udpFrame{frame: f}
	switch header.Ethernet(f).Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
			return u, false
		}
		u.ip, u.udp = p[:ip.HeaderLength()], header.UDP(p[ip.HeaderLength():ip.TotalLength()])
		u.src = netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), u.udp.SourcePort())
		u.dst = netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), u.udp.DestinationPort())
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) || ip.TransportProtocol() != header.UDPProtocolNumber {
			return u, false
		}
		u.ip, u.udp = p[:header.IPv6MinimumSize], header.UDP(p[header.IPv6MinimumSize:header.IPv6MinimumSize+int(ip.PayloadLength())])
		u.src = netip.AddrPortFrom(netip.AddrFrom16(ip.SourceAddress().As16()), u.udp.SourcePort())
		u.dst = netip.AddrPortFrom(netip.AddrFrom16(ip.DestinationAddress().As16()), u.udp.DestinationPort())
	default:
		return u, false
	}
	return u, len(u.udp) >= header.UDPMinimumSize
}

// pseudoSum is the UDP pseudo-header sum of u (not complemented), what a
// partial checksum holds.
func (u udpFrame) pseudoSum() uint16 {
	return header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpipAddr(u.src.Addr()), tcpipAddr(u.dst.Addr()), uint16(len(u.udp)))
}

// checksumValid reports whether u's UDP checksum is complete and right.
func (u udpFrame) checksumValid() bool {
	return u.udp.Checksum() != 0 && checksum.Checksum(u.udp, u.pseudoSum()) == 0xffff
}

// TestUDPReplyFastFrames: replies from the host reach the guest through the
// reply fast path (gVisor's UDP sends only the first), as frames whose
// headers are byte for byte those gVisor made for the first reply, with a
// valid UDP checksum (IPv4 header checksum too) or, with virtio-net
// headers, a partial one that completes to a valid one; the capture sees
// them, get_stats and the flow's byte count count them; a reply larger
// than the MTU still arrives (gVisor fragments it).
func TestUDPReplyFastFrames(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, vnet := range []bool{false, true} {
			name := fmt.Sprintf("%s/vnet=%v", map[bool]string{false: "ipv4", true: "ipv6"}[v6], vnet)
			t.Run(name, func(t *testing.T) { testUDPReplyFastFrames(t, v6, vnet) })
		}
	}
}

func testUDPReplyFastFrames(t *testing.T, v6, vnet bool) {
	pc := udpEchoServer(t, v6)
	e, _ := startTapEnvOpts(t, 1500, vnet, v6)
	var log frameLog
	e.s.SetCapture(&log)
	gw := gw4
	if v6 {
		waitSLAAC(t, e)
		gw = gw6
	}
	dst := netip.AddrPortFrom(gw, portOf(pc.LocalAddr()))
	u := guestUDP(t, e.guest, v6)
	const queries = 50
	buf := make([]byte, 8192)
	exchange := func(i int, msg []byte) {
		t.Helper()
		if _, err := u.WriteTo(msg, net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatalf("guest write #%d: %v", i, err)
		}
		u.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := u.ReadFrom(buf)
		if err != nil {
			t.Fatalf("guest read #%d (%d bytes sent): %v", i, len(msg), err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("echo #%d: %d bytes, want the %d sent", i, n, len(msg))
		}
	}
	for i := range queries {
		exchange(i, fmt.Appendf(nil, "query %04d, the same length each time", i))
	}
	if got := e.s.gv.Stats().UDP.PacketsSent.Value(); got > 3 {
		t.Errorf("gVisor's UDP sent %d of the %d replies; want only the first few (the fast path sends the rest)", got, queries)
	}

	// The replies as they crossed the tap, in order.
	var replies []udpFrame
	for _, f := range log.all() {
		if u, ok := parseUDPFrame(f); ok && u.src == dst {
			replies = append(replies, u)
		}
	}
	if len(replies) != queries {
		t.Fatalf("capture saw %d replies, want %d", len(replies), queries)
	}
	first := replies[0] // through gVisor
	if !first.checksumValid() {
		t.Fatalf("first reply (gVisor's): UDP checksum %#04x not valid", first.udp.Checksum())
	}
	fast := 0
	for i, r := range replies[1:] {
		if !v6 && header.IPv4(r.ip).CalculateChecksum() != 0xffff {
			t.Errorf("reply #%d: IPv4 header checksum %#04x not valid", i+1, header.IPv4(r.ip).Checksum())
		}
		switch {
		case r.checksumValid():
		case vnet && r.udp.Checksum() == r.pseudoSum():
			// Partial: the kernel adds the sum of the UDP header and
			// payload, as it does for a CHECKSUM_PARTIAL packet.
			fast++
			full := bytes.Clone(r.udp)
			sum := ^checksum.Checksum(full, 0)
			binary.BigEndian.PutUint16(full[6:], sum)
			if checksum.Checksum(full, r.pseudoSum()) != 0xffff {
				t.Errorf("reply #%d: partial checksum does not complete to a valid one", i+1)
			}
		default:
			t.Errorf("reply #%d: UDP checksum %#04x neither valid nor the partial %#04x", i+1, r.udp.Checksum(), r.pseudoSum())
		}
		// Everything but the checksums as gVisor made it (the queries,
		// so the replies, all have one length).
		hdrs := header.EthernetMinimumSize + len(r.ip) + header.UDPMinimumSize
		got, want := bytes.Clone(r.frame[:hdrs]), bytes.Clone(first.frame[:hdrs])
		for _, f := range [][]byte{got, want} {
			ip := f[header.EthernetMinimumSize:]
			if !v6 {
				binary.BigEndian.PutUint16(ip[10:], 0)
			}
			binary.BigEndian.PutUint16(ip[len(r.ip)+6:], 0)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("reply #%d differs from gVisor's beyond the checksums:\n got %x\nwant %x", i+1, got, want)
		}
	}
	if vnet && fast < queries-3 {
		t.Errorf("%d of %d replies had a partial checksum; want all but the first few (the fast path's)", fast, queries)
	}

	// Counters: the tap's frames to the guest, the flow's bytes in.
	st := e.s.Stats()
	if st.Tap.TxFrames < queries {
		t.Errorf("get_stats tap tx_frames = %d, want at least the %d replies", st.Tap.TxFrames, queries)
	}
	var in uint64
	for _, c := range e.s.Connections() {
		if c.Proto == "udp" && c.Remote == dst.String() {
			in = c.BytesIn
		}
	}
	if want := uint64(queries * len("query 0000, the same length each time")); in != want {
		t.Errorf("flow bytes_in = %d, want %d", in, want)
	}

	// Larger than the MTU (and within the echo server's 2048 bytes):
	// gVisor fragments it.
	exchange(queries, bytes.Repeat([]byte("big reply "), 190))
}
