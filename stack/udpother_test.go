package stack

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestUDPReplyFromOtherPort: as with slirp4netns, a datagram from another port of the
// flow's host reaches the guest (a TFTP server answers from a new port), from the address
// the guest sent to, and the guest's answer to that port leaves through the same host
// socket, so the host sees one address and port for the guest.
func TestUDPReplyFromOtherPort(t *testing.T) {
	e := startEnv(t, testConfig(t))
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pa, pb := uint16(a.LocalAddr().(*net.UDPAddr).Port), uint16(b.LocalAddr().(*net.UDPAddr).Port)

	g := guestUDP(t, e.guest, false)
	gw := func(p uint16) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(10, 0, 2, 2), Port: int(p)} }
	if _, err := g.WriteTo([]byte("hello"), gw(pa)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, guestOnHost, err := a.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("host server a: read %q, %v; want hello", buf[:n], err)
	}
	a.WriteToUDPAddrPort([]byte("from a"), guestOnHost)
	b.WriteToUDPAddrPort([]byte("from b"), guestOnHost)

	got := map[string]string{}
	g.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(got) < 2 {
		n, from, err := g.ReadFrom(buf)
		if err != nil {
			t.Fatalf("guest: %v after %v; want a datagram from 10.0.2.2:%d and one from 10.0.2.2:%d", err, got, pa, pb)
		}
		got[from.String()] = string(buf[:n])
	}
	want := map[string]string{gw(pa).String(): "from a", gw(pb).String(): "from b"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("guest received %v, want %v", got, want)
			break
		}
	}

	// The guest answers b; b must see the same host address and port as a did.
	if _, err := g.WriteTo([]byte("to b"), gw(pb)); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := b.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "to b" || from != guestOnHost {
		t.Errorf("host server b: read %q from %v, %v; want \"to b\" from %v (the flow's host socket)", buf[:n], from, err, guestOnHost)
	}
}

// TestGuestVisible: which host addresses the guest may see datagrams from, and as what.
func TestGuestVisible(t *testing.T) {
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	e := startEnv(t, cfg)
	ap := netip.MustParseAddrPort
	none := netip.AddrPort{}
	for _, tc := range []struct {
		from   netip.AddrPort
		v6     bool
		want   netip.AddrPort
		wantOK bool
	}{
		{ap("127.0.0.1:69"), false, ap("10.0.2.2:69"), true},            // the host's loopback: the gateway
		{ap("[::1]:69"), true, ap("[fd00::2]:69"), true},                // the same in IPv6
		{ap("127.0.0.2:69"), false, none, false},                        // another loopback address
		{ap("198.51.100.8:3479"), false, ap("198.51.100.8:3479"), true}, // another host, as itself
		{ap("[::ffff:198.51.100.8]:3479"), false, ap("198.51.100.8:3479"), true},
		{ap("10.0.2.50:1"), false, none, false},     // the virtual network
		{ap("10.0.2.2:1"), false, none, false},      // our own address
		{ap("[2001:db8::1]:1"), false, none, false}, // the other family
		{ap("224.0.0.1:1"), false, none, false},     // multicast
	} {
		got, ok := e.s.guestVisible(tc.from, tc.v6)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("guestVisible(%v, v6 %v) = %v, %v; want %v, %v", tc.from, tc.v6, got, ok, tc.want, tc.wantOK)
		}
	}
}

// TestUDPOnePortPerGuestPort: datagrams from one guest port to two destinations leave the
// host from one address and port (endpoint-independent mapping, as slirp4netns), so a peer
// learns the guest's public port from a third party (STUN) and can use it.
func TestUDPOnePortPerGuestPort(t *testing.T) {
	e := startEnv(t, testConfig(t))
	var servers [2]*net.UDPConn
	for i := range servers {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		servers[i] = c
	}
	g := guestUDP(t, e.guest, false)
	var seen [2]netip.AddrPort
	buf := make([]byte, 100)
	for i, srv := range servers {
		to := &net.UDPAddr{IP: net.IPv4(10, 0, 2, 2), Port: srv.LocalAddr().(*net.UDPAddr).Port}
		if _, err := g.WriteTo([]byte("hi"), to); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
		seen[i] = from
	}
	if seen[0] != seen[1] {
		t.Errorf("one guest port reached two servers from %v and %v; want one host address and port", seen[0], seen[1])
	}
}

// TestUDPPortUnreachableRelayed: a datagram to a closed port of the host's loopback comes
// back to the guest as ICMP port unreachable, so the guest's connected socket fails with
// ECONNREFUSED (the host kernel's error, read from the socket's error queue).
func TestUDPPortUnreachableRelayed(t *testing.T) {
	e := startEnv(t, testConfig(t))
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	c, err := gonet.DialUDP(e.guest, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(gw4), Port: closed}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// gVisor reports the error on the socket's next call, a write or a read.
		_, err := c.Write([]byte("anyone?"))
		if err == nil {
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			_, err = c.Read(buf)
		}
		if err != nil && strings.Contains(err.Error(), "refused") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest read after a datagram to 10.0.2.2:%d (closed on the host): %v, want connection refused", closed, err)
		}
	}
}
