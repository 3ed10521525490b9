package stack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/usernet/usernet/dhcp"
	"github.com/usernet/usernet/dhcp6"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
)

// The golden file pins every packet builder's output byte for byte, so
// that a rewrite of a builder cannot change what goes on the wire
// unnoticed. Regenerate it (only for an intended change) with
//
//	go test ./stack -run TestPacketGolden -update-golden
var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/packets.golden from the current builders")

const goldenFile = "testdata/packets.golden"

// goldenID is what the IPv4 ID counter is set to before each case: the
// IDs (and with them the checksums) then do not depend on what ran before.
const goldenID = 0x1233

// goldenStack builds a Stack on a pipe without running it: the builders
// only read its addresses, MAC and config, and tcpUnreachable queues its
// packet on s.ctl, which nobody drains.
func goldenStack(t *testing.T, mtu uint32, dns bool) *Stack {
	t.Helper()
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.MTU = mtu
	if dns {
		cfg.ServeDNS = func(ctx context.Context, pc net.PacketConn, ln net.Listener) error { <-ctx.Done(); return nil }
	}
	_, stackLink := pipe.New(guestMAC, stackMAC, mtu)
	s, err := newStack(cfg, ethernet.New(stackLink))
	if err != nil {
		t.Fatalf("newStack: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// seqBytes returns n bytes counting up from start (mod 256).
func seqBytes(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

type goldenCase struct {
	name  string
	build func() []byte // nil result: the builder refused
}

func goldenCases(t *testing.T) []goldenCase {
	s := goldenStack(t, 1500, true)
	s9k := goldenStack(t, 9000, false)
	ap := netip.MustParseAddrPort
	guest6 := netip.MustParseAddr("fd00::100")
	ll6 := netip.MustParseAddr("fe80::64")
	far6 := netip.MustParseAddr("2001:db8::1")
	bcast4 := netip.AddrFrom4([4]byte{255, 255, 255, 255})

	// The offending packets quoted by ICMP errors; built here, so their
	// IDs are set apart from the cases' own.
	ipv4ID.Store(goldenID - 0x100)
	udpQuote4 := ipv4Packet(guest4, outside, header.UDPProtocolNumber, udpDatagram(ap("10.0.2.100:5000"), ap("192.0.2.1:53"), []byte("query")))
	tcpQuote6 := ipv6Packet(guest6, far6, header.TCPProtocolNumber, 64, seqBytes(20, 0x40))
	ll6Quote := ipv6Packet(ll6, far6, header.UDPProtocolNumber, 64, seqBytes(13, 0x80))

	// echo is an ICMP echo reply as a host ping socket returns it: the
	// kernel's identifier (0xbeef) and checksum, which the builder replaces.
	echo := func(typ byte, payload []byte) []byte {
		return append([]byte{typ, 0, 0x12, 0x34, 0xbe, 0xef, 0, 7}, payload...)
	}

	tcpUnreach := func(src, dst netip.AddrPort, seq uint32, code uint8) func() []byte {
		return func() []byte {
			if err := s.gv.AddStaticNeighbor(nicID, protoOf(src.Addr()), tcpipAddr(src.Addr()), guestMAC); err != nil {
				t.Fatalf("AddStaticNeighbor(%v): %v", src.Addr(), err)
			}
			if !s.tcpUnreachable(src, dst, seq, code) {
				t.Fatalf("tcpUnreachable(%v, %v) = false", src, dst)
			}
			select {
			case p := <-s.ctl:
				if p.mac != guestMAC || p.proto != protoOf(src.Addr()) {
					t.Errorf("tcpUnreachable queued to %q proto %d, want %q proto %d", p.mac, p.proto, guestMAC, protoOf(src.Addr()))
				}
				return p.data
			default:
				t.Fatalf("tcpUnreachable(%v, %v) queued nothing", src, dst)
				return nil
			}
		}
	}

	return []goldenCase{
		{"ipv4Packet/udp", func() []byte {
			return ipv4Packet(guest4, outside, header.UDPProtocolNumber, seqBytes(13, 0))
		}},
		{"ipv4Packet/empty", func() []byte {
			return ipv4Packet(gw4, guest4, header.ICMPv4ProtocolNumber, nil)
		}},
		{"ipv6Packet/tcp", func() []byte {
			return ipv6Packet(guest6, far6, header.TCPProtocolNumber, 64, seqBytes(21, 1))
		}},
		{"ipv6Packet/hop255", func() []byte {
			return ipv6Packet(ll6, allNodes, header.ICMPv6ProtocolNumber, 255, seqBytes(8, 0xf0))
		}},

		{"dstUnreachable/v4/port", func() []byte {
			return dstUnreachable(outside, guest4, uint8(header.ICMPv4PortUnreachable), udpQuote4)
		}},
		{"dstUnreachable/v4/odd", func() []byte {
			return dstUnreachable(gw4, guest4, uint8(header.ICMPv4HostUnreachable), seqBytes(33, 7))
		}},
		{"dstUnreachable/v4/at-limit", func() []byte {
			return dstUnreachable(gw4, guest4, uint8(header.ICMPv4NetUnreachable), seqBytes(548, 3))
		}},
		{"dstUnreachable/v4/over-limit", func() []byte {
			return dstUnreachable(gw4, guest4, uint8(header.ICMPv4NetUnreachable), seqBytes(1500, 9))
		}},
		{"dstUnreachable/v6/address", func() []byte {
			return dstUnreachable(far6, guest6, uint8(header.ICMPv6AddressUnreachable), tcpQuote6)
		}},
		{"dstUnreachable/v6/odd", func() []byte {
			return dstUnreachable(gw6, guest6, uint8(header.ICMPv6PortUnreachable), seqBytes(41, 0x11))
		}},
		{"dstUnreachable/v6/at-limit", func() []byte {
			return dstUnreachable(gw6, guest6, uint8(header.ICMPv6NetworkUnreachable), seqBytes(1228, 5))
		}},
		{"dstUnreachable/v6/over-limit", func() []byte {
			return dstUnreachable(gw6, guest6, uint8(header.ICMPv6NetworkUnreachable), seqBytes(1500, 0x77))
		}},

		{"netUnreachable/v4", func() []byte { return s.netUnreachable(guest4, udpQuote4) }},
		{"netUnreachable/v6", func() []byte { return s.netUnreachable(guest6, tcpQuote6) }},
		{"netUnreachable/v6-link-local", func() []byte { return s.netUnreachable(ll6, ll6Quote) }},

		{"echoReply/v4", func() []byte {
			return s.echoReply(pingKey{src: guest4, dst: outside, id: 0x0102}, echo(byte(header.ICMPv4EchoReply), []byte("hello outside")))
		}},
		{"echoReply/v4/header-only", func() []byte {
			return s.echoReply(pingKey{src: guest4, dst: outside, id: 0xffff}, echo(byte(header.ICMPv4EchoReply), nil))
		}},
		{"echoReply/v6", func() []byte {
			return s.echoReply(pingKey{src: guest6, dst: far6, id: 0x0a0b}, echo(byte(header.ICMPv6EchoReply), []byte("hello six")))
		}},
		{"echoReply/v4/not-a-reply", func() []byte {
			return s.echoReply(pingKey{src: guest4, dst: outside, id: 1}, echo(byte(header.ICMPv4DstUnreachable), nil))
		}},
		{"echoReply/v6/not-a-reply", func() []byte {
			return s.echoReply(pingKey{src: guest6, dst: far6, id: 1}, echo(byte(header.ICMPv4EchoReply), nil))
		}},
		{"echoReply/short", func() []byte {
			return s.echoReply(pingKey{src: guest4, dst: outside, id: 1}, []byte{0, 0, 0, 0, 0, 0, 0})
		}},

		{"routerAdvert/dns", s.routerAdvert},
		{"routerAdvert/mtu9000-no-dns", s9k.routerAdvert},
		{"routerAdvert/dhcpv6-dnssl", func() []byte {
			// As pasta's command line with --dhcp-dns --dhcp-search:
			// M set, two DNS servers, a search list.
			s6 := goldenStack(t, 1500, true)
			s6.dhcp6 = &dhcp6.Server{}
			s6.cfg.Advertise = &Advertise{DNS6: []netip.Addr{far6, guest6}, Search: []string{"example.org", "a.example"}}
			return s6.routerAdvert()
		}},

		{"icmpUnreachableFor/v4", func() []byte {
			e := icmpError{dst: ap("192.0.2.1:53"), typ: uint8(header.ICMPv4DstUnreachable), code: uint8(header.ICMPv4PortUnreachable), payload: []byte("query")}
			return icmpUnreachableFor(e, ap("10.0.2.100:5000"), ap("192.0.2.1:53"))
		}},
		{"icmpUnreachableFor/v4/empty", func() []byte {
			e := icmpError{dst: ap("127.0.0.1:9"), typ: uint8(header.ICMPv4DstUnreachable), code: uint8(header.ICMPv4HostUnreachable)}
			return icmpUnreachableFor(e, ap("10.0.2.100:40000"), ap("10.0.2.2:9"))
		}},
		{"icmpUnreachableFor/v6", func() []byte {
			e := icmpError{dst: ap("[2001:db8::1]:443"), v6: true, typ: uint8(header.ICMPv6DstUnreachable), code: uint8(header.ICMPv6PortUnreachable), payload: seqBytes(31, 0x20)}
			return icmpUnreachableFor(e, ap("[fd00::100]:6000"), ap("[2001:db8::1]:443"))
		}},

		{"tcpUnreachable/v4", tcpUnreach(ap("10.0.2.100:40000"), ap("192.0.2.1:80"), 0xdeadbeef, uint8(header.ICMPv4HostUnreachable))},
		{"tcpUnreachable/v6", tcpUnreach(ap("[fd00::100]:40001"), ap("[2001:db8::1]:443"), 0x01020304, uint8(header.ICMPv6AddressUnreachable))},

		{"udp4/odd", func() []byte { return udpDatagram(ap("10.0.2.2:67"), ap("10.0.2.15:68"), seqBytes(7, 0x31)) }},
		// The payload is chosen so that the sum comes out as zero, which
		// RFC 768 sends as 0xffff.
		{"udp4/zero-sum", func() []byte { return udpDatagram(ap("10.0.2.2:67"), ap("10.0.2.15:68"), []byte{0xe7, 0x42}) }},
		{"dhcpReply", func() []byte {
			// As serveDHCP builds it; any payload will do.
			return ipv4Packet(gw4, bcast4, header.UDPProtocolNumber,
				udpDatagram(netip.AddrPortFrom(gw4, dhcp.ServerPort), netip.AddrPortFrom(bcast4, dhcp.ClientPort), seqBytes(300, 0x63)))
		}},
	}
}

// TestPacketGolden compares what each builder produces for fixed inputs
// with testdata/packets.golden.
func TestPacketGolden(t *testing.T) {
	cases := goldenCases(t)
	got := make(map[string]string, len(cases))
	var out strings.Builder
	out.WriteString("# Packet builder outputs for TestPacketGolden: name, then the packet in hex (\"nil\": none).\n")
	for _, c := range cases {
		if _, dup := got[c.name]; dup {
			t.Fatalf("duplicate golden case %q", c.name)
		}
		ipv4ID.Store(goldenID)
		h := "nil"
		if p := c.build(); p != nil {
			h = hex.EncodeToString(p)
		}
		got[c.name] = h
		fmt.Fprintf(&out, "%s %s\n", c.name, h)
	}
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenFile, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}

	want := readGolden(t)
	for _, c := range cases {
		w, ok := want[c.name]
		if !ok {
			t.Errorf("%s: not in %s (run with -update-golden)", c.name, goldenFile)
			continue
		}
		if g := got[c.name]; g != w {
			t.Errorf("%s:\n got %s\nwant %s\n%s", c.name, g, w, firstDiff(g, w))
		}
	}
	for name := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("%s: in %s but no such case", name, goldenFile)
		}
	}
}

func readGolden(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make(map[string]string)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, h, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("%s: malformed line %q", goldenFile, line)
		}
		want[name] = h
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return want
}

// firstDiff describes where two hex strings first differ, in bytes.
func firstDiff(got, want string) string {
	g, _ := hex.DecodeString(got)
	w, _ := hex.DecodeString(want)
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			return fmt.Sprintf("first difference at byte %d: %#02x, want %#02x", i, g[i], w[i])
		}
	}
	return fmt.Sprintf("lengths %d, want %d", len(g), len(w))
}

// TestIPv4IDCounts checks that consecutive IPv4 packets carry consecutive
// IDs, in the quoted packets as in the outer ones.
func TestIPv4IDCounts(t *testing.T) {
	ipv4ID.Store(0xfffe)
	a := ipv4Packet(gw4, guest4, header.UDPProtocolNumber, nil)
	b := ipv4Packet(gw4, guest4, header.UDPProtocolNumber, nil)
	c := icmpUnreachableFor(icmpError{code: uint8(header.ICMPv4PortUnreachable)}, netip.MustParseAddrPort("10.0.2.100:1"), netip.MustParseAddrPort("192.0.2.1:2"))
	quoted := header.IPv4(c[header.IPv4MinimumSize+header.ICMPv4MinimumSize:])
	for _, x := range []struct {
		what string
		got  uint16
		want uint16
	}{
		{"first", header.IPv4(a).ID(), 0xffff},
		{"second (wrapped)", header.IPv4(b).ID(), 0},
		{"quoted", quoted.ID(), 1},
		{"ICMP error", header.IPv4(c).ID(), 2},
	} {
		if x.got != x.want {
			t.Errorf("%s packet: ID %#x, want %#x", x.what, x.got, x.want)
		}
	}
	if !bytes.Equal(header.IPv4(c).DestinationAddressSlice(), guest4.AsSlice()) {
		t.Errorf("ICMP error to %v, want %v", header.IPv4(c).DestinationAddress(), guest4)
	}
}
