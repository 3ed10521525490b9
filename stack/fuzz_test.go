package stack

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzGuestFrame feeds whole Ethernet frames from the namespace, the
// untrusted side, through the stack's whole input path: the link filter
// (ARP, DHCP, NDP, the UDP fast path, SYN notes, the gateway's
// unreachables) and gVisor behind it, of a stack as usual and of one with
// DisableHostLoopback. No frame may panic or wedge the
// stack: a TCP connection and a UDP flow (on the fast path) opened before
// the first frame must still carry data after the last one. Without
// -fuzz, `go test` runs the seeds below; with -fuzz=FuzzGuestFrame it
// mutates them. Every host socket goes through a redirect that refuses all but loopback, so nothing
// a frame asks for leaves the machine's loopback.
func FuzzGuestFrame(f *testing.F) {
	ln := listenTCP(f, "tcp4", "127.0.0.1:0", echoServe)
	echo := udpEchoServer(f, false)
	cfg := testConfig(f)
	cfg.Plan = testPlan(f, true)
	cfg.host = &redirect{}
	// F's Logf may not be called while the fuzz target runs: keep the
	// stack's last lines for a failure instead.
	var logs lastLines
	cfg.Logf = logs.logf
	f.Cleanup(func() {
		if f.Failed() {
			f.Logf("the stack's last log lines:\n%s", logs.String())
		}
	})
	e := startEnv(f, cfg)
	// The same frames also go to a stack with --disable-host-loopback,
	// whose gateway answers with unreachables of its own.
	cfgNoLoop := cfg
	cfgNoLoop.Plan.HostLoopback4, cfgNoLoop.Plan.HostLoopback6 = netip.Addr{}, netip.Addr{}
	noLoop := startEnv(f, cfgNoLoop)

	c, err := guestDial(f, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		f.Fatalf("guest dial: %v", err)
	}
	udpDst := netip.AddrPortFrom(gw4, portOf(echo.LocalAddr()))
	u := guestUDP(f, e.guest, false)
	udpRoundTrip(f, u, udpDst, "open the flow")
	uSrc := netip.AddrPortFrom(guest4, portOf(u.LocalAddr())) // bound to no address

	// After the last frame (Cleanups run last first: before startEnv's).
	f.Cleanup(func() {
		udpRoundTrip(f, u, udpDst, "after the frames")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "still here"); err != nil {
			f.Errorf("TCP write after the frames: %v", err)
			return
		}
		buf := make([]byte, len("still here"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
			f.Errorf("TCP echo after the frames: %q, %v", buf, err)
		}
		c.Close()
	})

	for _, s := range guestFrameSeeds(uSrc, udpDst) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var proto tcpip.NetworkProtocolNumber
		if len(frame) >= header.EthernetMinimumSize {
			proto = header.Ethernet(frame).Type()
		}
		// An error only means the guest's NIC refused to send it.
		e.guest.WriteRawPacket(1, proto, buffer.MakeWithData(append([]byte(nil), frame...)))
		noLoop.guest.WriteRawPacket(1, proto, buffer.MakeWithData(append([]byte(nil), frame...)))
	})
}

// lastLines keeps the last 50 lines logged to it.
type lastLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lastLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	if len(l.lines) > 50 {
		l.lines = l.lines[len(l.lines)-50:]
	}
}

func (l *lastLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// udpRoundTrip sends one datagram from u to dst and waits for its echo.
func udpRoundTrip(t testing.TB, u net.PacketConn, dst netip.AddrPort, what string) {
	t.Helper()
	if _, err := u.WriteTo([]byte(what), net.UDPAddrFromAddrPort(dst)); err != nil {
		t.Fatalf("%s: UDP write: %v", what, err)
	}
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for {
		// Echoes of the frames' datagrams on the flow may come first.
		n, _, err := u.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: no UDP echo: %v", what, err)
		}
		if string(buf[:n]) == what {
			return
		}
	}
}

// guestFrameSeeds are frames a namespace sends, well-formed or nearly,
// one for each path of the link filter and a few of gVisor's: the fuzzer
// starts from them. flow is the guest's UDP flow on the fast path.
func guestFrameSeeds(flowSrc, flowDst netip.AddrPort) [][]byte {
	guest6 := netip.MustParseAddr("fd00::100")
	far6 := netip.MustParseAddr("2001:db8::1")
	closed := netip.AddrPortFrom(gw4, 1)
	syn := func(src, dst netip.AddrPort) []byte {
		tcp := make([]byte, header.TCPMinimumSize+4)
		binary.BigEndian.PutUint16(tcp[0:], src.Port())
		binary.BigEndian.PutUint16(tcp[2:], dst.Port())
		binary.BigEndian.PutUint32(tcp[4:], 0x01020304)
		tcp[12] = byte(len(tcp)/4) << 4
		tcp[13] = byte(header.TCPFlagSyn)
		binary.BigEndian.PutUint16(tcp[14:], 65535)
		copy(tcp[20:], []byte{2, 4, 0x05, 0xb4}) // MSS 1460
		return withL4Checksum(src.Addr(), dst.Addr(), header.TCPProtocolNumber, tcp, 16)
	}
	udp := func(src, dst netip.AddrPort, payload []byte) []byte {
		d := make([]byte, header.UDPMinimumSize+len(payload))
		binary.BigEndian.PutUint16(d[0:], src.Port())
		binary.BigEndian.PutUint16(d[2:], dst.Port())
		binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
		copy(d[8:], payload)
		return withL4Checksum(src.Addr(), dst.Addr(), header.UDPProtocolNumber, d, 6)
	}
	ip := func(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, seg []byte) []byte {
		if src.Is4() {
			return ipv4Packet(src, dst, proto, seg)
		}
		return ipv6Packet(src, dst, proto, 64, seg)
	}
	ap := netip.AddrPortFrom
	bootp := make([]byte, 240)
	bootp[0], bootp[1], bootp[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, hlen
	copy(bootp[28:], guestMAC)
	copy(bootp[236:], []byte{99, 130, 83, 99}) // magic cookie
	bootp = append(bootp, 53, 1, 1, 255)       // DHCPDISCOVER, end

	arp := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	arp = append(arp, guestMAC...)
	arp = append(arp, guest4.AsSlice()...)
	arp = append(arp, 0, 0, 0, 0, 0, 0)
	arp = append(arp, gw4.AsSlice()...)

	frag := ipv4Packet(guest4, gw4, header.UDPProtocolNumber, udp(flowSrc, flowDst, []byte("first half")))
	frag[6] = 0x20 // more fragments
	hopByHop := append([]byte{byte(header.UDPProtocolNumber), 0, 1, 4, 0, 0, 0, 0}, udp(ap(guest6, 5000), ap(dns6, 53), []byte("q"))...)

	type seed struct {
		dst   tcpip.LinkAddress
		proto tcpip.NetworkProtocolNumber
		pkt   []byte
	}
	const v4, v6, arpP = header.IPv4ProtocolNumber, header.IPv6ProtocolNumber, header.ARPProtocolNumber
	bcast := tcpip.LinkAddress("\xff\xff\xff\xff\xff\xff")
	seeds := []seed{
		{bcast, arpP, arp},
		{stackMAC, v4, ip(guest4, flowDst.Addr(), header.UDPProtocolNumber, udp(flowSrc, flowDst, []byte("fast path")))},
		{stackMAC, v4, ip(guest4, outside, header.UDPProtocolNumber, udp(ap(guest4, 5001), ap(outside, 53), []byte("q")))},
		{stackMAC, v4, ip(guest4, dns4, header.UDPProtocolNumber, udp(ap(guest4, 5002), ap(dns4, 53), []byte("q")))},
		{stackMAC, v4, ip(guest4, netip.MustParseAddr("10.0.2.50"), header.UDPProtocolNumber, udp(ap(guest4, 5003), ap(netip.MustParseAddr("10.0.2.50"), 9), nil))},
		{stackMAC, v4, ip(guest4, outside, header.TCPProtocolNumber, syn(ap(guest4, 40000), ap(outside, 80)))},
		{stackMAC, v4, ip(guest4, gw4, header.TCPProtocolNumber, syn(ap(guest4, 40001), closed))},
		{stackMAC, v4, ip(guest4, gw4, header.ICMPv4ProtocolNumber, []byte{8, 0, 0xf7, 0xfe, 0, 1, 0, 0})},
		{stackMAC, v4, ip(guest4, outside, header.ICMPv4ProtocolNumber, []byte{8, 0, 0xf7, 0xfd, 0, 1, 0, 1})},
		{bcast, v4, ip(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), header.UDPProtocolNumber, udp(ap(netip.IPv4Unspecified(), 68), ap(netip.MustParseAddr("255.255.255.255"), 67), bootp))},
		{stackMAC, v4, frag},
		{"\x33\x33\x00\x00\x00\x02", v6, ip(guest6, netip.MustParseAddr("ff02::2"), header.ICMPv6ProtocolNumber, []byte{133, 0, 0, 0, 0, 0, 0, 0})},
		{"\x33\x33\xff\x00\x00\x02", v6, ipv6Packet(guest6, netip.MustParseAddr("ff02::1:ff00:2"), header.ICMPv6ProtocolNumber, 255, append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, gw6.AsSlice()...))},
		{stackMAC, v6, ip(guest6, dns6, header.UDPProtocolNumber, udp(ap(guest6, 5004), ap(dns6, 53), []byte("q")))},
		{stackMAC, v6, ip(guest6, far6, header.TCPProtocolNumber, syn(ap(guest6, 40002), ap(far6, 443)))},
		{stackMAC, v6, ip(guest6, gw6, header.ICMPv6ProtocolNumber, []byte{128, 0, 0, 0, 0, 1, 0, 1})},
		{stackMAC, v6, ipv6Packet(guest6, dns6, 0 /* hop-by-hop */, 64, hopByHop)},
	}
	var frames [][]byte
	for _, s := range seeds {
		frame := make([]byte, header.EthernetMinimumSize+len(s.pkt))
		header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: guestMAC, DstAddr: s.dst, Type: s.proto})
		copy(frame[header.EthernetMinimumSize:], s.pkt)
		frames = append(frames, frame)
	}
	// A VLAN tag, a runt, nothing.
	vlan := append([]byte(nil), frames[1][:12]...)
	vlan = append(vlan, 0x81, 0x00, 0, 1)
	frames = append(frames, append(vlan, frames[1][12:]...), frames[1][:10], nil)
	return frames
}

// withL4Checksum fills in the TCP or UDP checksum of seg (at off) over
// the pseudo-header of src and dst.
func withL4Checksum(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, seg []byte, off int) []byte {
	sum := header.PseudoHeaderChecksum(proto, tcpipAddr(src), tcpipAddr(dst), uint16(len(seg)))
	checksum.Put(seg[off:], ^checksum.Checksum(seg, sum))
	return seg
}
