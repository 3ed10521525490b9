package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/usernet/usernet/policy"
)

// egressEnv runs the stack with a policy that denies 203.0.113.0/24 and
// allows the rest; every other outside address reaches loopback servers.
func egressEnv(t *testing.T, rst bool) (*env, *redirect, netip.AddrPort) {
	t.Helper()
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	echo := netip.MustParseAddrPort(ln.Addr().String())
	udp := udpEchoServer(t, false)
	udpEcho := netip.MustParseAddrPort(udp.LocalAddr().String())
	d := &redirect{to: func(_ context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
		if network == "udp" {
			return udpEcho, nil
		}
		return echo, nil
	}}
	p, err := policy.New(policy.Config{Default: policy.Allow, Rules: []policy.Rule{
		{Action: policy.Deny, Dst: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.host, cfg.Egress, cfg.EgressRST = d, p, rst
	return startEnv(t, cfg), d, echo
}

func TestEgressDeniedTCP(t *testing.T) {
	for _, tc := range []struct {
		rst  bool
		want string
	}{{false, "no route to host"}, {true, "connection was refused"}} {
		e, d, _ := egressEnv(t, tc.rst)
		start := time.Now()
		_, err := guestDial(t, e.guest, netip.MustParseAddrPort("203.0.113.5:80"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rst=%v: denied connect: %v, want %q", tc.rst, err, tc.want)
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("rst=%v: the denied connect took %v", tc.rst, el)
		}
		c, err := guestDial(t, e.guest, netip.MustParseAddrPort("198.51.100.9:80"))
		if err != nil {
			t.Fatalf("allowed connect: %v", err)
		}
		c.Close()
		if calls := d.dialed(); slices.ContainsFunc(calls, func(s string) bool { return strings.Contains(s, "203.0.113.") }) {
			t.Errorf("a denied destination was dialed: %v", calls)
		}
		if n := e.s.Refusals()["policy"]; n != 1 {
			t.Errorf("policy refusals %d, want 1", n)
		}
	}
}

func TestEgressDeniedUDPAndPing(t *testing.T) {
	e, d, _ := egressEnv(t, false)
	isProhibited := func(b []byte) bool {
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) {
			return false
		}
		icmp := header.ICMPv4(ip.Payload())
		return icmp.Type() == header.ICMPv4DstUnreachable && icmp.Code() == header.ICMPv4AdminProhibited
	}
	c := guestUDP(t, e.guest, false)
	if _, err := c.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("203.0.113.7"), Port: 53000}); err != nil {
		t.Fatal(err)
	}
	e.sniff.waitFor(t, 5*time.Second, "ICMP prohibited for the UDP datagram", isProhibited)

	if reply := guestPing(t, e.guest, netip.MustParseAddr("203.0.113.8"), []byte("hi"), 2*time.Second); reply != nil {
		t.Errorf("a denied ping got an echo reply")
	}
	// One prohibited for the datagram and one for the echo.
	deadline := time.Now().Add(5 * time.Second)
	for e.s.Refusals()["policy"] < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.s.Refusals()["policy"]; n != 2 {
		t.Errorf("policy refusals %d, want 2", n)
	}
	if calls := d.dialed(); slices.ContainsFunc(calls, func(s string) bool { return strings.Contains(s, "203.0.113.") }) {
		t.Errorf("a denied destination was reached: %v", calls)
	}

	// An allowed datagram still goes through.
	if _, err := c.WriteTo([]byte("ping"), &net.UDPAddr{IP: net.ParseIP("198.51.100.9"), Port: 7}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, _, err := c.ReadFrom(buf); err != nil || string(buf[:n]) != "ping" {
		t.Errorf("allowed UDP echo: %q, %v", buf[:n], err)
	}
}

// TestLiveFlowsAndKillDenied: a live TCP connection is listed with its
// bytes each way; once a rule denies it, KillDenied resets it.
func TestLiveFlowsAndKillDenied(t *testing.T) {
	e, _, _ := egressEnv(t, false)
	c, err := guestDial(t, e.guest, netip.MustParseAddrPort("198.51.100.9:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	var got []FlowInfo
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		// The relay counts each direction after its write: the echo
		// can reach the guest before the request is counted.
		if got = e.s.Connections(); len(got) == 1 && got[0].BytesIn == 5 && got[0].BytesOut == 5 {
			break
		}
	}
	if len(got) != 1 || got[0].Proto != "tcp" || got[0].Remote != "198.51.100.9:80" || got[0].BytesOut != 5 || got[0].BytesIn != 5 {
		t.Fatalf("Connections = %+v; want the one TCP connection with 5 bytes each way", got)
	}
	if st := e.s.Stats(); st.Flows["tcp"] != 1 || st.FlowsTotal["tcp"] != 1 {
		t.Errorf("Stats = %+v", st)
	}
	if _, err := e.s.cfg.Egress.Add(policy.Rule{Action: policy.Deny, Proto: policy.TCP, Dst: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, 0); err != nil {
		t.Fatal(err)
	}
	// The rule names the host address the flow reaches: the test seam's loopback echo server.
	if n := e.s.KillDenied(); n != 1 {
		t.Fatalf("KillDenied = %d, want 1", n)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("read after the kill: %v, want a reset", err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(e.s.Connections()) != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := e.s.Connections(); len(got) != 0 {
		t.Errorf("after the kill: %+v", got)
	}
}
