package stack

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// udpEchoed sends one datagram from u to dst and waits up to d for the
// echo; it reports whether it came.
func udpEchoed(u *gonet.UDPConn, dst netip.AddrPort, msg string, d time.Duration) bool {
	if _, err := u.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(dst)); err != nil {
		return false
	}
	u.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 100)
	n, _, err := u.ReadFrom(buf)
	return err == nil && string(buf[:n]) == msg
}

// isAdminProhibited matches the ICMP error the stack sends for a flow
// refused at a limit.
func isAdminProhibited(p []byte) bool {
	return isICMPv4(p, header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited)
}

// waitRefusals waits until counter name reaches at least want.
func waitRefusals(t *testing.T, s *Stack, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Refusals()[name] < want {
		if time.Now().After(deadline) {
			t.Fatalf("refusal counter %q = %d, want at least %d (all: %v)", name, s.Refusals()[name], want, s.Refusals())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUDPFlowLimitRefuses(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	cfg := testConfig(t)
	cfg.Limits.UDPFlows = 4
	e := startEnv(t, cfg)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))

	var conns []*gonet.UDPConn
	for i := range 4 {
		u := guestUDP(t, e.guest, false)
		if !udpEchoed(u, dst, fmt.Sprint("flow ", i), 5*time.Second) {
			t.Fatalf("flow %d (of a limit of 4) not served", i)
		}
		conns = append(conns, u)
	}
	extra := guestUDP(t, e.guest, false)
	if udpEchoed(extra, dst, "one too many", 300*time.Millisecond) {
		t.Fatal("a fifth flow was served with Limits.UDPFlows = 4 and none idle")
	}
	e.sniff.waitFor(t, 5*time.Second, "ICMP administratively prohibited", isAdminProhibited)
	waitRefusals(t, e.s, "udp_flows", 1)
	// The flows inside the limit are still served.
	for i, u := range conns {
		if !udpEchoed(u, dst, fmt.Sprint("again ", i), 5*time.Second) {
			t.Errorf("flow %d not served after the refusal", i)
		}
	}
}

func TestUDPFlowLimitEvictsIdle(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	cfg := testConfig(t)
	cfg.Limits.UDPFlows = 4
	cfg.evictIdle = 200 * time.Millisecond
	e := startEnv(t, cfg)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))

	for i := range 4 {
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "x", 5*time.Second) {
			t.Fatalf("flow %d not served", i)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i := range 8 {
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "new", 5*time.Second) {
			t.Fatalf("new flow %d not served: the idle ones should make room", i)
		}
		time.Sleep(250 * time.Millisecond) // the newest becomes evictable too
	}
	waitRefusals(t, e.s, "udp_flows_evicted", 8)
	if n := e.s.Refusals()["udp_flows"]; n != 0 {
		t.Errorf("%d flows refused, want 0 (idle ones to evict)", n)
	}
	if n := e.s.udpHostSockets(); n > 4 {
		t.Errorf("%d host sockets, want at most the limit of 4", n)
	}
}

func TestUDPPortLimit(t *testing.T) {
	goroutineLeakCheck(t)
	pcs := []net.PacketConn{udpEchoServer(t, false), udpEchoServer(t, false), udpEchoServer(t, false)}
	cfg := testConfig(t)
	cfg.Limits.UDPPorts = 2
	e := startEnv(t, cfg)
	dst := func(i int) netip.AddrPort { return netip.AddrPortFrom(gw4, portOf(pcs[i].LocalAddr())) }

	// One guest port, several destinations: one host socket.
	a := guestUDP(t, e.guest, false)
	for i := range pcs {
		if !udpEchoed(a, dst(i), "a", 5*time.Second) {
			t.Fatalf("port a to server %d not served", i)
		}
	}
	b := guestUDP(t, e.guest, false)
	if !udpEchoed(b, dst(0), "b", 5*time.Second) {
		t.Fatal("second port not served (limit 2)")
	}
	c := guestUDP(t, e.guest, false)
	if udpEchoed(c, dst(0), "c", 300*time.Millisecond) {
		t.Fatal("a third guest port was served with Limits.UDPPorts = 2")
	}
	waitRefusals(t, e.s, "udp_ports", 1)
	e.sniff.waitFor(t, 5*time.Second, "ICMP administratively prohibited", isAdminProhibited)
	if n := e.s.udpHostSockets(); n != 2 {
		t.Errorf("%d host sockets, want the limit of 2", n)
	}
	for _, u := range []*gonet.UDPConn{a, b} {
		if !udpEchoed(u, dst(1), "still", 5*time.Second) {
			t.Error("a port inside the limit not served after the refusal")
		}
	}
}

func TestUDPPortLimitEvictsIdle(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	cfg := testConfig(t)
	cfg.Limits.UDPPorts = 2
	cfg.evictIdle = 200 * time.Millisecond
	e := startEnv(t, cfg)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))
	for range 2 {
		udpEchoed(guestUDP(t, e.guest, false), dst, "x", 5*time.Second)
	}
	time.Sleep(300 * time.Millisecond)
	if !udpEchoed(guestUDP(t, e.guest, false), dst, "new", 5*time.Second) {
		t.Fatal("a new port not served: an idle one should make room")
	}
	waitRefusals(t, e.s, "udp_flows_evicted", 1)
}

// memInUse is the heap and stack memory in use after a collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestUDPIdleFlowsHoldLittle checks that an idle UDP flow holds a few KiB,
// not a datagram buffer, and that memory comes back when flows end.
func TestUDPIdleFlowsHoldLittle(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 flows")
	}
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	cfg := testConfig(t)
	cfg.udpIdle = 3 * time.Second
	e := startEnv(t, cfg)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))

	const flows = 1000
	conns := make([]*gonet.UDPConn, flows)
	for i := range conns {
		conns[i] = guestUDP(t, e.guest, false)
	}
	// Warm up: one flow's worth of pools and caches.
	udpEchoed(guestUDP(t, e.guest, false), dst, "warm", 5*time.Second)
	before := memInUse()
	for i, u := range conns {
		if !udpEchoed(u, dst, "x", 5*time.Second) {
			t.Fatalf("flow %d not served", i)
		}
	}
	during := memInUse()
	per := (int64(during) - int64(before)) / flows
	t.Logf("%d idle UDP flows (each its own guest port and host socket): %d bytes each (heap and stacks)", flows, per)
	// The port's parked reader is much of it; the old cost was two 64 KiB
	// buffers and another goroutine more. The race detector's shadow
	// memory makes the figures meaningless.
	if per > 20<<10 && !raceEnabled {
		t.Errorf("an idle UDP flow holds %d bytes, want a few KiB", per)
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.s.udpHostSockets() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d host sockets left 20s after the flows went idle (timeout 3s)", e.s.udpHostSockets())
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := memInUse()
	t.Logf("memory in use: %d KiB before, %d KiB with the flows, %d KiB after they expired", before>>10, during>>10, after>>10)
	// What stays is the maps' grown tables and the heap's fragments.
	if int64(after)-int64(before) > int64(flows)*4096 && !raceEnabled {
		t.Errorf("%d KiB still in use after the flows expired (before: %d KiB)", after>>10, before>>10)
	}
}

func TestPingFlowLimit(t *testing.T) {
	goroutineLeakCheck(t)
	needPingSockets(t)
	cfg := testConfig(t)
	cfg.host = &redirect{to: toLoopback}
	cfg.Limits.PingFlows = 3
	e := startEnv(t, cfg)

	// Each guestPing is a new guest ICMP endpoint, hence a new identifier.
	for i := range 3 {
		if guestPing(t, e.guest, outside, []byte("in"), 5*time.Second) == nil {
			t.Fatalf("ping %d (of a limit of 3) not answered", i)
		}
	}
	if guestPing(t, e.guest, outside, []byte("over"), 300*time.Millisecond) != nil {
		t.Fatal("a fourth ping flow was answered with Limits.PingFlows = 3")
	}
	e.sniff.waitFor(t, 5*time.Second, "ICMP administratively prohibited", isAdminProhibited)
	waitRefusals(t, e.s, "ping_flows", 1)
	e.s.ping.mu.Lock()
	n := len(e.s.ping.flows)
	e.s.ping.mu.Unlock()
	if n != 3 {
		t.Errorf("%d ping flows, want the limit of 3", n)
	}
}

func TestPingFlowLimitEvictsIdle(t *testing.T) {
	goroutineLeakCheck(t)
	needPingSockets(t)
	cfg := testConfig(t)
	cfg.host = &redirect{to: toLoopback}
	cfg.Limits.PingFlows = 2
	cfg.evictIdle = 200 * time.Millisecond
	e := startEnv(t, cfg)
	for range 2 {
		guestPing(t, e.guest, outside, nil, 5*time.Second)
	}
	time.Sleep(300 * time.Millisecond)
	if guestPing(t, e.guest, outside, []byte("new"), 5*time.Second) == nil {
		t.Fatal("a new ping flow not answered: an idle one should make room")
	}
	waitRefusals(t, e.s, "ping_flows_evicted", 1)
}

// spoofedUDP is a UDP datagram from src to dst, as the guest's link
// would carry it (checksum 0: none, allowed over IPv4).
func spoofedUDP(src, dst netip.AddrPort, payload string) []byte {
	u := header.UDP(make([]byte, header.UDPMinimumSize+len(payload)))
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	return ipv4Packet(src.Addr(), dst.Addr(), header.UDPProtocolNumber, u)
}

func TestSpoofedSourceDropped(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))
	spoof := netip.MustParseAddrPort("198.51.100.7:4000")

	t.Run("dropped", func(t *testing.T) {
		e := startEnv(t, testConfig(t))
		// The guest's own address still works, and teaches the stack
		// the guest's MAC.
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "own", 5*time.Second) {
			t.Fatal("UDP from the guest's own address not served")
		}
		for range 3 {
			injectFrame(t, e.guest, ipv4.ProtocolNumber, stackMAC, spoofedUDP(spoof, dst, "spoofed"))
		}
		waitRefusals(t, e.s, "spoofed_source", 3)
		time.Sleep(100 * time.Millisecond)
		if n := e.s.udpHostSockets(); n != 1 {
			t.Errorf("%d host sockets, want 1 (the guest's own flow only)", n)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Plan = testPlan(t, true)
		e := startEnv(t, cfg)
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "own", 5*time.Second) { // the stack runs
			t.Fatal("UDP from the guest's own address not served")
		}
		u := header.UDP(make([]byte, header.UDPMinimumSize+1))
		from, to := netip.MustParseAddr("2001:db8:99::1"), netip.MustParseAddr("fd00::2")
		u.Encode(&header.UDPFields{SrcPort: 4000, DstPort: dst.Port(), Length: uint16(len(u))})
		u.SetChecksum(^u.CalculateChecksum(header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpipAddr(from), tcpipAddr(to), uint16(len(u)))))
		injectFrame(t, e.guest, ipv6.ProtocolNumber, stackMAC, ipv6Packet(from, to, header.UDPProtocolNumber, 64, u))
		waitRefusals(t, e.s, "spoofed_source", 1)
		if n := e.s.udpHostSockets(); n != 1 {
			t.Errorf("%d host sockets, want 1 (the guest's own flow only)", n)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Limits.AllowSources = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		e := startEnv(t, cfg)
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "own", 5*time.Second) { // the stack runs
			t.Fatal("UDP from the guest's own address not served")
		}
		injectFrame(t, e.guest, ipv4.ProtocolNumber, stackMAC, spoofedUDP(spoof, dst, "routed"))
		deadline := time.Now().Add(5 * time.Second)
		for e.s.udpHostSockets() != 2 {
			if time.Now().After(deadline) {
				t.Fatal("UDP from an --allow-source prefix got no host socket")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n := e.s.Refusals()["spoofed_source"]; n != 0 {
			t.Errorf("spoofed_source = %d, want 0", n)
		}
	})
}

// TestIPv6EchoBehindExtensionHeaders checks that the stack does not answer
// an echo request to a foreign address when extension headers hide it
// from a look at the fixed header only.
func TestIPv6EchoBehindExtensionHeaders(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	e := startEnv(t, cfg)
	src := waitSLAAC(t, e)
	foreign := netip.MustParseAddr("2001:db8::99")

	echo := make([]byte, header.ICMPv6EchoMinimumSize+4)
	echo[0] = byte(header.ICMPv6EchoRequest)
	copy(echo[8:], "ping")
	header.ICMPv6(echo).SetChecksum(icmpv6Checksum(src, foreign, echo))
	// Hop-by-hop options: next header ICMPv6, length 0 (8 bytes), PadN.
	hbh := append([]byte{byte(header.ICMPv6ProtocolNumber), 0, 1, 4, 0, 0, 0, 0}, echo...)
	injectFrame(t, e.guest, ipv6.ProtocolNumber, stackMAC, ipv6Packet(src, foreign, ipv6HopByHop, 64, hbh))
	// A barrier: an echo to the gateway is answered after it.
	if guestPing(t, e.guest, gw6, []byte("barrier"), 5*time.Second) == nil {
		t.Fatal("no echo reply from the gateway")
	}
	if e.sniff.any(func(p []byte) bool {
		return len(p) > 41 && p[6] == byte(header.ICMPv6ProtocolNumber) && p[40] == byte(header.ICMPv6EchoReply) &&
			netip.AddrFrom16([16]byte(p[8:24])) == foreign
	}) {
		t.Error("the stack answered an echo request to a foreign address behind a hop-by-hop header")
	}
}

func TestUDPBufferBudget(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	cfg := testConfig(t)
	cfg.Limits.UDPBufferBytes = 2 * udpRcvBuf
	cfg.udpIdle = 500 * time.Millisecond
	e := startEnv(t, cfg)
	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))

	sizes := func() (big, small int) {
		e.s.udp.mu.Lock()
		defer e.s.udp.mu.Unlock()
		for f := range e.s.udp.flows {
			switch f.ep.SocketOptions().GetReceiveBufferSize() {
			case udpRcvBuf:
				big++
			case udpSmallRcvBuf:
				small++
			}
		}
		return big, small
	}
	for i := range 4 {
		if !udpEchoed(guestUDP(t, e.guest, false), dst, "x", 5*time.Second) {
			t.Fatalf("flow %d not served beyond the buffer budget", i)
		}
	}
	if big, small := sizes(); big != 2 || small != 2 {
		t.Errorf("%d flows with a 1 MiB receive buffer and %d with 16 KiB, want 2 and 2 (budget 2 MiB)", big, small)
	}
	// The budget comes back when the flows end.
	deadline := time.Now().Add(10 * time.Second)
	for e.s.udpHostSockets() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("flows did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !udpEchoed(guestUDP(t, e.guest, false), dst, "again", 5*time.Second) {
		t.Fatal("new flow not served")
	}
	if big, _ := sizes(); big != 1 {
		t.Errorf("a new flow after the others ended got no 1 MiB buffer: the budget was not returned")
	}
}

func TestSourceAllowed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		allow []string
		deny  []string
	}{
		{"slirp4netns", Config{Plan: testPlan(t, true)},
			[]string{"10.0.2.100", "10.0.2.15", "0.0.0.0", "169.254.3.4", "fd00::1234", "fe80::64", "::"},
			[]string{"10.0.3.1", "192.0.2.1", "127.0.0.1", "255.255.255.255", "224.0.0.1", "2001:db8::1", "ff02::1", "::1"}},
		// pasta: the guest has the host's address in the host's network.
		{"mirrored", Config{Plan: mirrorPlan(t)},
			[]string{"198.51.100.10", "198.51.100.77", "0.0.0.0", "fe80::1"},
			[]string{"10.0.2.100", "198.51.101.10", "192.0.2.1"}},
		{"allow-source", Config{Plan: testPlan(t, false), Limits: Limits{AllowSources: []netip.Prefix{
			netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("2001:db8:5::/48")}}},
			[]string{"10.9.200.1", "2001:db8:5::9", "10.0.2.100"},
			[]string{"10.10.0.1", "2001:db8:6::9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Stack{cfg: tc.cfg}
			s.sources4, s.sources6 = sourcePrefixes(&s.cfg)
			for _, a := range tc.allow {
				if !s.sourceAllowed(netip.MustParseAddr(a)) {
					t.Errorf("source %s refused, want allowed", a)
				}
			}
			for _, a := range tc.deny {
				if ad, err := netip.ParseAddr(a); err == nil && s.sourceAllowed(ad) {
					t.Errorf("source %s allowed, want refused", a)
				}
			}
		})
	}
}
