package stack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/netplan"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestTCPEchoViaGatewayReachesHostLoopback(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	e := startEnv(t, testConfig(t))

	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))
	c, err := guestDial(t, e.guest, dst)
	if err != nil {
		t.Fatalf("guest dial %v: %v", dst, err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("echo via %v = %q, %v; want %q, nil", dst, got, err, "ping")
	}
}

func TestTCPHalfCloseBothWays(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	halfCloseBothWays(t, e.guest, gw4, false)
}

// halfCloseBothWays checks, from guest through the gateway gw to the host's
// loopback, that each side's FIN leaves the other direction open: the host
// answers after the guest's FIN, and the guest replies after the host's.
func halfCloseBothWays(t *testing.T, guest *gvstack.Stack, gw netip.Addr, v6 bool) {
	// Host side: read the request to EOF, then answer, then close.
	reqDone := make(chan string, 1)
	ln1 := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), func(c net.Conn) {
		req, _ := io.ReadAll(c)
		reqDone <- string(req)
		io.WriteString(c, "answer after your FIN")
	})
	// Host side: speak first and half-close, then read the guest's reply.
	got2 := make(chan string, 1)
	ln2 := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), func(c net.Conn) {
		io.WriteString(c, "hello")
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got2 <- string(b)
	})

	t.Run("guest closes first", func(t *testing.T) {
		c, err := guestDial(t, guest, netip.AddrPortFrom(gw, portOf(ln1.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		defer c.Close()
		io.WriteString(c, "request")
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		if req := <-reqDone; req != "request" {
			t.Errorf("host read %q, want %q", req, "request")
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "answer after your FIN" {
			t.Errorf("guest read %q, %v; want the answer sent after its FIN", b, err)
		}
	})
	t.Run("host closes first", func(t *testing.T) {
		c, err := guestDial(t, guest, netip.AddrPortFrom(gw, portOf(ln2.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "hello" {
			t.Fatalf("guest read %q, %v; want %q then EOF", b, err, "hello")
		}
		io.WriteString(c, "reply after your FIN")
		c.CloseWrite()
		select {
		case s := <-got2:
			if s != "reply after your FIN" {
				t.Errorf("host read %q, want the guest's reply", s)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("host never got the guest's reply after half-closing")
		}
	})
}

func TestTCPLargeTransferIntact(t *testing.T) {
	goroutineLeakCheck(t)
	const size = 16 << 20
	// The server hashes what it receives, and sends back size bytes of
	// its own.
	hostSum := make(chan [32]byte, 1)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		// listenTCP closes c when this returns: the writer must be done
		// by then, or the guest sees an early FIN.
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			r := rand.New(rand.NewSource(2))
			io.CopyN(c, r, size)
			c.(*net.TCPConn).CloseWrite()
		})
		h := sha256.New()
		io.Copy(h, c)
		hostSum <- [32]byte(h.Sum(nil))
	})
	e := startEnv(t, testConfig(t))
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()

	sent := sha256.New()
	writeErr := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(c, sent), rand.New(rand.NewSource(1)), size)
		c.CloseWrite()
		writeErr <- err
	}()
	recv := sha256.New()
	n, err := io.Copy(recv, c)
	if err != nil || n != size {
		t.Fatalf("guest received %d bytes, %v; want %d, nil", n, err, size)
	}
	want := sha256.New()
	io.CopyN(want, rand.New(rand.NewSource(2)), size)
	if !bytes.Equal(recv.Sum(nil), want.Sum(nil)) {
		t.Errorf("host → guest: checksum mismatch")
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("guest write: %v", err)
	}
	if got := <-hostSum; !bytes.Equal(got[:], sent.Sum(nil)) {
		t.Errorf("guest → host: checksum mismatch")
	}
}

// closedPort returns a loopback port with nothing listening.
func closedPort(t testing.TB) uint16 {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := portOf(ln.Addr())
	ln.Close()
	return p
}

func TestTCPRefusedHostPortIsRefusedInGuest(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	dialRefused(t, e, netip.AddrPortFrom(gw4, closedPort(t)))
}

// dialRefused dials dst from the guest and wants a refusal (a RST).
func dialRefused(t *testing.T, e *env, dst netip.AddrPort) {
	t.Helper()
	c, err := guestDial(t, e.guest, dst)
	if err == nil {
		c.Close()
		t.Fatalf("guest dial %v succeeded, want connection refused", dst)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("guest dial %v: %v, want connection refused (RST)", dst, err)
	}
}

func TestTCPHostResetResetsGuest(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		io.ReadFull(c, make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	})
	e := startEnv(t, testConfig(t))
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("guest read after host RST: %v, want connection reset", err)
	}
}

func TestDisableHostLoopback(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	d := &redirect{}
	cfg := testConfig(t)
	cfg.Plan.HostLoopback4, cfg.Plan.HostLoopback6 = netip.Addr{}, netip.Addr{}
	cfg.host = d
	e := startEnv(t, cfg)

	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))
	c, err := guestDial(t, e.guest, dst)
	if err == nil {
		c.Close()
		t.Fatalf("guest dial %v succeeded with DisableHostLoopback", dst)
	}
	if !strings.Contains(err.Error(), "network is unreachable") {
		t.Errorf("guest dial %v: %v, want network unreachable (ICMP)", dst, err)
	}

	u := guestUDP(t, e.guest, false)
	if _, err := u.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, 9999))); err != nil {
		t.Fatalf("guest UDP write: %v", err)
	}
	e.sniff.waitFor(t, 5*time.Second, "ICMP net unreachable for UDP to the gateway", func(p []byte) bool {
		return isICMPv4(p, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable) && bytes.Contains(p[28:], []byte{0x27, 0x0f}) // quoted dst port 9999
	})

	if r := guestPing(t, e.guest, gw4, []byte("gw"), 5*time.Second); r == nil {
		t.Errorf("no echo reply from the gateway with DisableHostLoopback")
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("host dials with DisableHostLoopback: %v, want none", got)
	}
}

func isICMPv4(p []byte, typ header.ICMPv4Type, code header.ICMPv4Code) bool {
	return len(p) >= 28 && p[0]>>4 == 4 && p[9] == byte(header.ICMPv4ProtocolNumber) &&
		p[20] == byte(typ) && p[21] == byte(code)
}

// TestVirtualNetworkNeverDialed checks the network rule: flows to
// addresses of the virtual network never become host dials, while a flow
// to the outside does (the control case).
func TestVirtualNetworkNeverDialed(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	d := &redirect{to: func(_ context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(ln.Addr())), nil
	}}
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.host = d
	e := startEnv(t, cfg)
	waitSLAAC(t, e)

	for _, dst := range []string{
		"10.0.2.3:80", "10.0.2.3:53", "10.0.2.50:80", "10.0.2.255:80", "10.0.2.0:80",
		"[fd00::3]:80", "[fd00::50]:80",
	} {
		ap := netip.MustParseAddrPort(dst)
		t.Run("tcp "+dst, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(ap.Addr()), Port: ap.Port()}, protoOf(ap.Addr()))
			if err == nil {
				c.Close()
				t.Errorf("guest dial %v succeeded", ap)
			}
		})
		t.Run("udp "+dst, func(t *testing.T) {
			u := guestUDP(t, e.guest, ap.Addr().Is6())
			u.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(ap))
		})
	}
	t.Run("ping 10.0.2.50", func(t *testing.T) {
		if r := guestPing(t, e.guest, netip.MustParseAddr("10.0.2.50"), nil, 500*time.Millisecond); r != nil {
			t.Errorf("echo reply from 10.0.2.50, a free address of the virtual network")
		}
	})
	// Give stray UDP flows a chance to reach the dialer before looking.
	time.Sleep(200 * time.Millisecond)
	if got := d.dialed(); len(got) != 0 {
		t.Fatalf("virtual network addresses were dialed on the host: %v", got)
	}

	// Control: the outside is dialed, through the seam.
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatalf("guest dial %v: %v", outside, err)
	}
	io.WriteString(c, "out")
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "out" {
		t.Errorf("echo via %v = %q, %v", outside, b, err)
	}
	c.Close()
	if got, want := d.dialed(), []string{"tcp 192.0.2.1:80"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("dialed %v, want %v", got, want)
	}
}

// mirrorPlan is a pasta-like plan: the host's network 198.51.100.0/24
// copied, the guest at the host's address .10, the real router .1 as
// gateway, DNS forwarded at 169.254.1.1 and the host's own address
// reachable at 169.254.1.2 (Podman's defaults), no host loopback mapped.
func mirrorPlan(t testing.TB) netplan.Plan {
	t.Helper()
	p := netplan.Plan{
		Net4:        netip.MustParsePrefix("198.51.100.0/24"),
		Guest4:      netip.MustParseAddr("198.51.100.10"),
		Gateway4:    netip.MustParseAddr("198.51.100.1"),
		DNS4:        netip.MustParseAddr("169.254.1.1"),
		DHCPStart4:  netip.MustParseAddr("198.51.100.10"),
		DHCPSize:    1,
		GuestAlias4: netip.MustParseAddr("169.254.1.2"),
		HostAddr4:   netip.MustParseAddr("198.51.100.10"),
		Mirror:      true,
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("mirror plan: %v", err)
	}
	return p
}

// On a mirrored network the other addresses of the network are real
// hosts: only the guest's own address is never dialed.
func TestRouteTableMirror(t *testing.T) {
	s := &Stack{cfg: Config{Plan: mirrorPlan(t)}}
	for _, tc := range []struct {
		dst  string
		want verdict
		to   string
	}{
		{"198.51.100.1:80", forward, "198.51.100.1:80"},
		{"198.51.100.20:80", forward, "198.51.100.20:80"},
		{"198.51.100.10:80", reject, ""},
		{"169.254.1.2:8080", forward, "198.51.100.10:8080"},
		{"169.254.1.1:53", silent, ""},
		{"169.254.1.1:80", forward, "169.254.1.1:80"},
		{"127.0.0.1:80", reject, ""},
		{"203.0.113.5:443", forward, "203.0.113.5:443"},
	} {
		to, v := s.route(netip.MustParseAddrPort(tc.dst))
		if v != tc.want || (v == forward && to.String() != tc.to) {
			t.Errorf("route(%s) = %v, %v; want %v, %s", tc.dst, to, v, tc.want, tc.to)
		}
	}
	for a, want := range map[string]bool{"198.51.100.1": true, "198.51.100.77": true, "169.254.1.1": true, "198.51.100.10": false, "0.0.0.0": false} {
		if got := s.answersNeighbor(netip.MustParseAddr(a)); got != want {
			t.Errorf("answersNeighbor(%s) = %v, want %v", a, got, want)
		}
	}
	if s.deadGateway(netip.MustParseAddr("198.51.100.1")) {
		t.Errorf("a mirrored network's gateway is a real router, not a dead one")
	}
}

func TestRouteTable(t *testing.T) {
	s := &Stack{cfg: Config{Plan: testPlan(t, true)}}
	for _, tc := range []struct {
		dst  string
		want verdict
		to   string
	}{
		{"10.0.2.2:80", forward, "127.0.0.1:80"},
		{"[fd00::2]:80", forward, "[::1]:80"},
		{"10.0.2.3:53", silent, ""},
		{"[fd00::3]:53", silent, ""},
		{"10.0.2.3:80", reject, ""},
		{"10.0.2.100:80", reject, ""},
		{"10.0.2.255:80", reject, ""},
		{"[fd00::1234]:80", reject, ""},
		{"[fe80::1]:80", reject, ""},
		{"127.0.0.1:80", reject, ""},
		{"[::1]:80", reject, ""},
		{"[::ffff:127.0.0.1]:80", reject, ""},
		{"0.0.0.0:80", reject, ""},
		{"224.0.0.251:5353", reject, ""},
		{"255.255.255.255:67", reject, ""},
		{"[ff02::fb]:5353", reject, ""},
		{"192.0.2.1:443", forward, "192.0.2.1:443"},
		{"169.254.169.254:80", forward, "169.254.169.254:80"},
		{"[2001:db8::1]:443", forward, "[2001:db8::1]:443"},
	} {
		to, v := s.route(netip.MustParseAddrPort(tc.dst))
		if v != tc.want || (v == forward && to.String() != tc.to) {
			t.Errorf("route(%s) = %v, %v; want %v, %s", tc.dst, to, v, tc.want, tc.to)
		}
	}
	s.cfg.Plan.HostLoopback4 = netip.Addr{}
	if _, v := s.route(netip.MustParseAddrPort("10.0.2.2:80")); v != unreachable {
		t.Errorf("route(10.0.2.2:80) with DisableHostLoopback = %v, want unreachable", v)
	}
}

func TestUDPManyFlows(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	e := startEnv(t, testConfig(t))

	dst := netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))
	const flows = 50
	conns := make([]*gonet.UDPConn, flows)
	for i := range conns {
		conns[i] = guestUDP(t, e.guest, false)
		if _, err := conns[i].WriteTo(fmt.Appendf(nil, "flow %d", i), net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatalf("flow %d: guest write: %v", i, err)
		}
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 100)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("flow %d: guest read: %v", i, err)
		}
		if want := fmt.Sprintf("flow %d", i); string(buf[:n]) != want {
			t.Errorf("flow %d: got %q, want %q", i, buf[:n], want)
		}
		if got := from.(*net.UDPAddr).AddrPort(); got != dst {
			t.Errorf("flow %d: reply from %v, want %v (the original destination)", i, got, dst)
		}
	}
}

// udpHostSockets returns how many guest UDP ports have a host socket open.
func (s *Stack) udpHostSockets() int {
	s.udp.mu.Lock()
	defer s.udp.mu.Unlock()
	return len(s.udp.ports)
}

func TestUDPIdleFlowExpires(t *testing.T) {
	goroutineLeakCheck(t)
	pc := udpEchoServer(t, false)
	d := &redirect{}
	cfg := testConfig(t)
	cfg.host = d
	cfg.udpIdle = 300 * time.Millisecond
	e := startEnv(t, cfg)

	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, portOf(pc.LocalAddr())))
	u := guestUDP(t, e.guest, false)
	roundTrip := func() {
		t.Helper()
		u.WriteTo([]byte("x"), dst)
		u.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := u.ReadFrom(make([]byte, 10)); err != nil {
			t.Fatalf("guest read: %v", err)
		}
	}
	roundTrip()
	start := time.Now()
	// Traffic keeps the flow alive...
	for range 4 {
		time.Sleep(100 * time.Millisecond)
		roundTrip()
	}
	if n := e.s.udpHostSockets(); n != 1 {
		t.Fatalf("%d host sockets after %v with traffic every 100ms (idle timeout 300ms), want 1", n, time.Since(start))
	}
	// ...and idleness ends it, host socket and all.
	deadline := time.Now().Add(5 * time.Second)
	for e.s.udpHostSockets() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle UDP flow's host socket not closed within 5s (idle timeout 300ms)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	roundTrip()
	if n := e.s.udpHostSockets(); n != 1 {
		t.Errorf("%d host sockets for traffic after the flow expired, want 1", n)
	}
	if got := len(d.dialed()); got != 2 {
		t.Errorf("host flows = %d (%v), want 2 (one per flow lifetime)", got, d.dialed())
	}
}

func TestPingGatewayAnsweredByStack(t *testing.T) {
	goroutineLeakCheck(t)
	d := &redirect{}
	cfg := testConfig(t)
	cfg.host = d
	e := startEnv(t, cfg)
	for _, a := range []netip.Addr{gw4, dns4} {
		r := guestPing(t, e.guest, a, []byte("payload"), 5*time.Second)
		if r == nil || header.ICMPv4(r).Type() != header.ICMPv4EchoReply || !bytes.HasSuffix(r, []byte("payload")) {
			t.Errorf("ping %v: reply %x, want an echo reply with the payload", a, r)
		}
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("ping to the stack's own addresses dialed %v", got)
	}
}

// toLoopback is a redirect.to that sends every flow to the host's
// loopback address of its family, on the same port.
func toLoopback(_ context.Context, _ string, dst netip.AddrPort) (netip.AddrPort, error) {
	lo := netip.MustParseAddr("127.0.0.1")
	if dst.Addr().Is6() {
		lo = netip.IPv6Loopback()
	}
	return netip.AddrPortFrom(lo, dst.Port()), nil
}

// needPingSockets skips the test where this user may not open unprivileged
// ICMP sockets (net.ipv4.ping_group_range; test.sh's namespace allows
// them).
func needPingSockets(t *testing.T) {
	t.Helper()
	for _, a := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		c, err := dialPing(a, netip.Addr{})
		if err != nil {
			t.Skipf("no host ping sockets here (net.ipv4.ping_group_range): %v", err)
		}
		c.Close()
	}
}

func TestPingOutsideForwarded(t *testing.T) {
	goroutineLeakCheck(t)
	needPingSockets(t)
	d := &redirect{to: toLoopback}
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.host = d
	e := startEnv(t, cfg)

	r := guestPing(t, e.guest, outside, []byte("hello outside"), 5*time.Second)
	if r == nil {
		t.Fatalf("no echo reply from %v", outside)
	}
	if header.ICMPv4(r).Type() != header.ICMPv4EchoReply || !bytes.HasSuffix(r, []byte("hello outside")) {
		t.Errorf("reply %x: want echo reply with the payload", r)
	}
	// The reply must carry the guest's identifier, or the guest's ping
	// socket would not have received it at all; check the wire copy too.
	p := e.sniff.waitFor(t, time.Second, "echo reply", func(p []byte) bool {
		return isICMPv4(p, header.ICMPv4EchoReply, 0)
	})
	if !header.IPv4(p).IsChecksumValid() || checksum.Checksum(p[20:], 0) != 0xffff {
		t.Errorf("echo reply has a bad checksum: %x", p)
	}
	if got := header.IPv4(p).SourceAddress(); got != tcpipAddr(outside) {
		t.Errorf("echo reply from %v, want %v", got, outside)
	}

	// IPv6 to the outside, configured by router advertisements.
	waitSLAAC(t, e)
	out6 := netip.MustParseAddr("2001:db8::1")
	if r := guestPing(t, e.guest, out6, []byte("v6"), 5*time.Second); r == nil || !bytes.HasSuffix(r, []byte("v6")) {
		t.Errorf("ping %v: reply %x, want an echo reply with the payload", out6, r)
	}

	if got, want := d.dialed(), []string{"ping4 192.0.2.1:0", "ping6 [2001:db8::1]:0"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("host ping sockets for %v, want %v", got, want)
	}
}

func TestPingDeniedIsDroppedAndLoggedOnce(t *testing.T) {
	goroutineLeakCheck(t)
	var mu sync.Mutex
	var logs []string
	cfg := testConfig(t)
	logf := cfg.Logf
	cfg.Logf = func(format string, args ...any) {
		mu.Lock()
		logs = append(logs, fmt.Sprintf(format, args...))
		mu.Unlock()
		logf(format, args...)
	}
	cfg.host = &redirect{to: func(context.Context, string, netip.AddrPort) (netip.AddrPort, error) {
		return netip.AddrPort{}, fmt.Errorf("ping socket: %w", os.NewSyscallError("socket", syscall.EACCES))
	}}
	e := startEnv(t, cfg)
	for range 3 {
		if r := guestPing(t, e.guest, outside, nil, 300*time.Millisecond); r != nil {
			t.Fatalf("echo reply %x without a ping socket", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, l := range logs {
		if strings.Contains(l, "ping_group_range") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("logged the ping socket refusal %d times, want once; logs: %q", n, logs)
	}
}

func TestIPv6RouterAdvertisementSLAACAndLoopback(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp6", "[::1]:0", echoServe)
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.ServeDNS = func(ctx context.Context, pc net.PacketConn, ln net.Listener) error { <-ctx.Done(); return nil }
	e := startEnv(t, cfg)

	ra := e.sniff.waitFor(t, 10*time.Second, "router advertisement", func(p []byte) bool {
		return len(p) > 40 && p[0]>>4 == 6 && p[6] == byte(header.ICMPv6ProtocolNumber) && p[40] == byte(header.ICMPv6RouterAdvert)
	})
	if src := netip.AddrFrom16([16]byte(ra[8:24])); src != netip.MustParseAddr("fe80::2") {
		t.Errorf("RA from %v, want fe80::2", src)
	}
	if ra[7] != 255 {
		t.Errorf("RA hop limit %d, want 255", ra[7])
	}
	if checksum.Checksum(ra[40:], header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, header.IPv6(ra).SourceAddress(), header.IPv6(ra).DestinationAddress(), uint16(len(ra)-40))) != 0xffff {
		t.Errorf("RA checksum invalid")
	}
	if !bytes.Contains(ra, dns6.AsSlice()) {
		t.Errorf("RA lacks RDNSS fd00::3")
	}

	// SLAAC address in fd00::/64 (DAD passed) and a default route.
	addr := waitSLAAC(t, e)
	e.ndp.mu.Lock()
	if r, ok := e.ndp.dad[tcpipAddr(addr)]; !ok || fmt.Sprintf("%T", r) != "*stack.DADSucceeded" {
		t.Errorf("DAD of the guest's SLAAC address %v: %v (ok=%v), want success; the stack must not answer for it", addr, r, ok)
	}
	if fmt.Sprint(e.ndp.rdnss) == "[]" || e.ndp.rdnss[0] != tcpipAddr(dns6) {
		t.Errorf("guest learned DNS servers %v from RAs, want fd00::3", e.ndp.rdnss)
	}
	e.ndp.mu.Unlock()

	// A router solicitation is answered.
	before := countRAs(e)
	rs := make([]byte, 8)
	rs[0] = byte(header.ICMPv6RouterSolicit)
	src := netip.MustParseAddr("fe80::64")
	header.ICMPv6(rs).SetChecksum(icmpv6Checksum(src, netip.MustParseAddr("ff02::2"), rs))
	injectFrame(t, e.guest, ipv6.ProtocolNumber, "\x33\x33\x00\x00\x00\x02", ipv6Packet(src, netip.MustParseAddr("ff02::2"), header.ICMPv6ProtocolNumber, 255, rs))
	deadline := time.Now().Add(5 * time.Second)
	for countRAs(e) == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if countRAs(e) == before {
		t.Errorf("router solicitation not answered")
	}

	// fd00::2 is the host's ::1, through the default route.
	var c *gonet.TCPConn
	var err error
	for time.Now().Before(deadline) {
		if c, err = guestDial(t, e.guest, netip.AddrPortFrom(gw6, portOf(ln.Addr()))); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("guest dial [fd00::2]: %v (routes %v)", err, e.guest.GetRouteTable())
	}
	defer c.Close()
	io.WriteString(c, "six")
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "six" {
		t.Errorf("echo via fd00::2 = %q, %v", b, err)
	}
}

// waitSLAAC waits until the guest has a SLAAC address in fd00::/64 and a
// default route, as router advertisements teach it.
func waitSLAAC(t testing.TB, e *env) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var addr netip.Addr
		for _, pa := range e.guest.AllAddresses()[1] {
			if a := addrFrom(pa.AddressWithPrefix.Address); netip.MustParsePrefix("fd00::/64").Contains(a) {
				addr = a
			}
		}
		hasDefault := false
		for _, r := range e.guest.GetRouteTable() {
			if r.Destination == header.IPv6EmptySubnet && r.Gateway == tcpipAddr(netip.MustParseAddr("fe80::2")) {
				hasDefault = true
			}
		}
		e.ndp.mu.Lock()
		_, dadDone := e.ndp.dad[tcpipAddr(addr)]
		e.ndp.mu.Unlock()
		if addr.IsValid() && hasDefault && dadDone {
			return addr
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("guest not configured by RAs within 10s: addresses %v, routes %v", e.guest.AllAddresses(), e.guest.GetRouteTable())
	return netip.Addr{}
}

func countRAs(e *env) int {
	e.sniff.mu.Lock()
	defer e.sniff.mu.Unlock()
	n := 0
	for _, p := range e.sniff.pkts {
		if len(p) > 40 && p[0]>>4 == 6 && p[6] == byte(header.ICMPv6ProtocolNumber) && p[40] == byte(header.ICMPv6RouterAdvert) {
			n++
		}
	}
	return n
}

func TestNeighborsAnsweredOnlyForOwnAddresses(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	e := startEnv(t, cfg)
	resolve := func(a netip.Addr) error {
		ch := make(chan error, 1)
		err := e.guest.GetLinkAddress(1, tcpipAddr(a), tcpip.Address{}, protoOf(a), func(r gvstack.LinkResolutionResult) {
			if r.Err != nil {
				ch <- errors.New(r.Err.String())
				return
			}
			ch <- nil
		})
		if err != nil {
			if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
				return errors.New(err.String())
			}
		}
		select {
		case err := <-ch:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("timeout")
		}
	}
	if err := resolve(gw4); err != nil {
		t.Errorf("ARP for the gateway: %v", err)
	}
	if err := resolve(dns4); err != nil {
		t.Errorf("ARP for the DNS address: %v", err)
	}
	if err := resolve(netip.MustParseAddr("10.0.2.50")); err == nil {
		t.Errorf("ARP for 10.0.2.50 was answered; only the stack's own addresses may be")
	}
	waitSLAAC(t, e)
	for _, a := range []string{"fd00::2", "fd00::3", "fe80::2"} {
		if err := resolve(netip.MustParseAddr(a)); err != nil {
			t.Errorf("neighbor solicitation for %s: %v", a, err)
		}
	}
	for _, a := range []string{"fd00::50", "fe80::50"} {
		if err := resolve(netip.MustParseAddr(a)); err == nil {
			t.Errorf("neighbor solicitation for %s was answered; only the stack's own addresses may be", a)
		}
	}
	// Unicast solicitations (NUD probes) reach gVisor's NS handling
	// without a multicast group in the way; with spoofing on, it would
	// answer them all.
	isNA := func(target netip.Addr) func([]byte) bool {
		return func(p []byte) bool {
			return len(p) >= 64 && p[0]>>4 == 6 && p[6] == byte(header.ICMPv6ProtocolNumber) &&
				p[40] == byte(header.ICMPv6NeighborAdvert) && netip.AddrFrom16([16]byte(p[48:64])) == target
		}
	}
	src := netip.MustParseAddr("fd00::100")
	for _, target := range []netip.Addr{netip.MustParseAddr("fd00::50"), gw6} {
		ns := append([]byte{byte(header.ICMPv6NeighborSolicit), 0, 0, 0, 0, 0, 0, 0}, target.AsSlice()...)
		ns = append(ns, 1, 1)
		ns = append(ns, guestMAC...)
		header.ICMPv6(ns).SetChecksum(icmpv6Checksum(src, target, ns))
		injectFrame(t, e.guest, ipv6.ProtocolNumber, stackMAC, ipv6Packet(src, target, header.ICMPv6ProtocolNumber, 255, ns))
	}
	e.sniff.waitFor(t, 5*time.Second, "neighbor advertisement for fd00::2", isNA(gw6))
	if e.sniff.any(isNA(netip.MustParseAddr("fd00::50"))) {
		t.Errorf("unicast neighbor solicitation for fd00::50 was answered")
	}
}

func TestDNSListenersServedAndAnswered(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	var mu sync.Mutex
	served := map[string]bool{}
	cfg.ServeDNS = func(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
		mu.Lock()
		served[pc.LocalAddr().String()] = true
		mu.Unlock()
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					b, _ := io.ReadAll(c)
					c.Write(append([]byte("tcp answer to "), b...))
				})
			}
		})
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			pc.WriteTo(append([]byte("udp answer to "), buf[:n]...), from)
		}
	}
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)

	u := guestUDP(t, e.guest, false)
	u.WriteTo([]byte("q1"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dns4, 53)))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := u.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "udp answer to q1" {
		t.Fatalf("UDP DNS: %q, %v", buf[:n], err)
	}
	if from.(*net.UDPAddr).AddrPort() != netip.AddrPortFrom(dns4, 53) {
		t.Errorf("UDP DNS answer from %v, want 10.0.2.3:53", from)
	}

	c, err := guestDial(t, e.guest, netip.AddrPortFrom(dns4, 53))
	if err != nil {
		t.Fatalf("TCP DNS dial: %v", err)
	}
	io.WriteString(c, "q2")
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "tcp answer to q2" {
		t.Errorf("TCP DNS: %q, %v", b, err)
	}
	c.Close()

	// Run calls ServeDNS for each listener on a goroutine of its own: the
	// IPv6 one, not used above, may not have started yet.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		ok := served["10.0.2.3:53"] && served["[fd00::3]:53"]
		got := fmt.Sprint(served)
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("ServeDNS called for %v after 5 s, want 10.0.2.3:53 and [fd00::3]:53", got)
			break
		}
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("DNS traffic dialed %v", got)
	}
}

func TestDNSDisabledGetsNoAnswer(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)

	u := guestUDP(t, e.guest, false)
	u.WriteTo([]byte("q"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dns4, 53)))
	u.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, _, err := u.ReadFrom(make([]byte, 100)); err == nil {
		t.Errorf("UDP to 10.0.2.3:53 without ServeDNS got %d bytes back", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dns4), Port: 53}, ipv4.ProtocolNumber)
	if err == nil {
		c.Close()
		t.Fatal("TCP to 10.0.2.3:53 without ServeDNS connected")
	}
	if strings.Contains(err.Error(), "refused") {
		t.Errorf("TCP to 10.0.2.3:53 without ServeDNS: %v; want no answer at all (timeout), not a RST", err)
	}
	if e.sniff.any(func(p []byte) bool { return isICMPv4(p, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable) }) {
		t.Errorf("ICMP port unreachable sent for 10.0.2.3:53")
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("DNS traffic without ServeDNS dialed %v (the network rule)", got)
	}
}

func TestMalformedPacketsDoNotHurt(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.host = &redirect{}
	e := startEnv(t, cfg)

	// A connection that must survive the garbage.
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()

	good4 := ipv4Packet(guest4, outside, header.ICMPv4ProtocolNumber, []byte{8, 0, 0, 0, 0, 1, 0, 1})
	good6 := ipv6Packet(netip.MustParseAddr("fd00::100"), netip.MustParseAddr("2001:db8::1"), header.ICMPv6ProtocolNumber, 64, []byte{128, 0, 0, 0, 0, 1, 0, 1})
	ns := ipv6Packet(netip.MustParseAddr("fd00::100"), netip.MustParseAddr("ff02::1:ff00:2"), header.ICMPv6ProtocolNumber, 255, append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, gw6.AsSlice()...))
	syn := ipv4Packet(guest4, gw4, header.TCPProtocolNumber, []byte{0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0})
	arpReq := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	r := rand.New(rand.NewSource(1))
	for i := range 3000 {
		var p []byte
		var proto tcpip.NetworkProtocolNumber
		switch i % 5 {
		case 0:
			p, proto = append([]byte(nil), good4...), ipv4.ProtocolNumber
		case 1:
			p, proto = append([]byte(nil), good6...), ipv6.ProtocolNumber
		case 2:
			p, proto = append([]byte(nil), ns...), ipv6.ProtocolNumber
		case 3:
			p, proto = append([]byte(nil), syn...), ipv4.ProtocolNumber
		case 4:
			p, proto = append([]byte(nil), arpReq...), header.ARPProtocolNumber
		}
		// Truncate, corrupt a few bytes, or grow.
		switch r.Intn(3) {
		case 0:
			p = p[:r.Intn(len(p)+1)]
		case 1:
			for range 1 + r.Intn(4) {
				if len(p) > 0 {
					p[r.Intn(len(p))] = byte(r.Intn(256))
				}
			}
		case 2:
			p = append(p, make([]byte, r.Intn(64))...)
			if len(p) > 0 {
				p[r.Intn(len(p))] = byte(r.Intn(256))
			}
		}
		injectFrame(t, e.guest, proto, stackMAC, p)
	}

	io.WriteString(c, "still here")
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "still here" {
		t.Errorf("connection after garbage: %q, %v", b, err)
	}
}

func TestShutdownClosesFlowsAndReturns(t *testing.T) {
	goroutineLeakCheck(t)
	// The host server never answers and never closes on its own.
	hold := make(chan struct{})
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) { <-hold; io.Copy(io.Discard, c) })
	t.Cleanup(func() { close(hold) })
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })

	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	cfg.ServeDNS = func(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
		// A ServeDNS that ignores ctx: Run must still unblock it.
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return nil
			}
		}
	}
	cfg.host = &redirect{to: func(ctx context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
		if dst.Addr() == outside && network == "tcp" {
			<-ctx.Done() // a black hole: the dial only ends with the stack
			return netip.AddrPort{}, ctx.Err()
		}
		return toLoopback(ctx, network, dst)
	}}
	e := startEnv(t, cfg)

	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	u := guestUDP(t, e.guest, false)
	u.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, portOf(pc.LocalAddr()))))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatalf("UDP flow not set up: %v", err)
	}
	if r := guestPing(t, e.guest, outside, nil, 5*time.Second); r == nil {
		t.Fatalf("ping flow not set up")
	}
	// A connection attempt stuck in its dial.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := gonet.DialContextTCP(ctx, e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(outside), Port: 80}, ipv4.ProtocolNumber); err == nil {
			c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	e.stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	// The guest's connection was reset, not left hanging.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("guest connection after shutdown: %v, want reset", err)
	}
}

func TestCloseWithoutRun(t *testing.T) {
	goroutineLeakCheck(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// fdbased accepts any fd; a pipe stands in for the tap.
	cfg := testConfig(t)
	cfg.Tap = r
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Errorf("Run after Close = nil, want an error")
	}
	if _, err := r.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("tap not closed by Close: Stat() = %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	bad := testPlan(t, false)
	bad.Guest4 = bad.Gateway4
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no plan", Config{}},
		{"inconsistent plan", Config{Plan: bad}},
		{"outbound v6 as v4", Config{Plan: testPlan(t, false), OutboundAddr: netip.MustParseAddr("::1")}},
	} {
		if s, err := newStack(tc.cfg, nil); err == nil {
			s.Close()
			t.Errorf("%s: newStack(%+v) succeeded, want an error", tc.name, tc.cfg)
		}
	}
	if _, err := New(Config{Plan: testPlan(t, false)}); err == nil {
		t.Errorf("New without Tap succeeded")
	}
}

func TestRunEndsWithErrorWhenTapFails(t *testing.T) {
	goroutineLeakCheck(t)
	// A socketpair stands in for the tap: once the peer is closed, reads
	// return 0 bytes, which link.Tap treats as a failed read, as it does
	// the error of a tap whose namespace is gone.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Tap = os.NewFile(uintptr(fds[0]), "tap")
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	syscall.Close(fds[1])
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Run() = nil after the tap failed, want an error")
		}
	case <-time.After(10 * time.Second):
		s.Close()
		t.Fatal("Run did not return after the tap failed")
	}
}

// TestUDPFastPath: after a flow's first datagram, the link filter writes
// the flow's datagrams to its host socket itself (udpfast.go), for IPv4 and
// IPv6. Every datagram still arrives, in order, with its content; replies
// come back; the flow leaves the fast table when it expires.
func TestUDPFastPath(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			goroutineLeakCheck(t)
			pc := udpEchoServer(t, v6)
			cfg := testConfig(t)
			cfg.udpIdle = 300 * time.Millisecond
			cfg.Plan = testPlan(t, v6)
			e := startEnv(t, cfg)
			gw := gw4
			if v6 {
				waitSLAAC(t, e)
				gw = gw6
			}
			dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, portOf(pc.LocalAddr())))
			u := guestUDP(t, e.guest, v6)
			buf := make([]byte, 2048)
			for i := range 500 {
				msg := fmt.Appendf(nil, "datagram %d %s", i, strings.Repeat("x", i))
				if _, err := u.WriteTo(msg, dst); err != nil {
					t.Fatalf("guest write #%d: %v", i, err)
				}
				u.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _, err := u.ReadFrom(buf)
				if err != nil {
					t.Fatalf("guest read #%d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("echo #%d = %q, want %q", i, buf[:n], msg)
				}
				if i == 0 {
					continue
				}
				if got := e.s.udpFast.n.Load(); got != 1 {
					t.Fatalf("after datagram #%d: %d flows in the fast table, want 1", i, got)
				}
			}
			// The first datagram opens the flow; a few more may pass
			// through gVisor before the fast path has it.
			if got := e.s.gv.Stats().UDP.PacketsReceived.Value(); got > 10 {
				t.Errorf("gVisor received %d of the 500 datagrams, want only the first few (the fast path takes the rest)", got)
			}
			deadline := time.Now().Add(5 * time.Second)
			for e.s.udpFast.n.Load() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("expired flow still in the fast table after 5s (idle timeout 300ms)")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
