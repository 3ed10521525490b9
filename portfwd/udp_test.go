package portfwd

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// addUDP registers a UDP forward from lo4:(a free port) to guest4:53, routed
// to a fresh UDP echo server, and returns the host port and ID.
func addUDP(t *testing.T, r *Registry, d *fakeDialer) (uint16, int) {
	t.Helper()
	port := freePort(t, "udp", lo4)
	rule := Rule{Proto: "udp", HostAddr: lo4, HostPort: port, GuestPort: 53}
	id, err := r.Add(context.Background(), rule)
	if err != nil {
		t.Fatalf("Add(%v) = %v", rule, err)
	}
	d.route(netip.AddrPortFrom(guest4, 53), udpEchoServer(t, lo4))
	return port, id
}

// udpClient returns a UDP socket bound to local, "connected" to the forward.
func udpClient(t *testing.T, local netip.Addr, port uint16) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo4, port)))
	if err != nil {
		t.Fatalf("udp client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg on c and returns the reply.
func exchange(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("client %v: write: %v", c.LocalAddr(), err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("client %v: no reply to %q: %v", c.LocalAddr(), msg, err)
	}
	return string(buf[:n])
}

func TestUDPEchoEachClientGetsItsOwnReplies(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	port, _ := addUDP(t, r, d)

	clients := []*net.UDPConn{
		udpClient(t, lo4, port),
		udpClient(t, lo4, port),
		udpClient(t, netip.MustParseAddr("127.0.0.2"), port),
	}
	for round := range 3 {
		// Send from all first, then read: replies must not cross.
		for i, c := range clients {
			c.Write([]byte(fmt.Sprintf("client %d round %d", i, round)))
		}
		for i, c := range clients {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1500)
			n, err := c.Read(buf)
			want := fmt.Sprintf("echo:client %d round %d", i, round)
			if err != nil || string(buf[:n]) != want {
				t.Fatalf("client %d round %d: reply %q, %v; want %q", i, round, buf[:n], err, want)
			}
		}
	}
	calls := d.Calls()
	if len(calls) != len(clients) {
		t.Fatalf("DialUDP calls = %v; want one flow per client (%d)", calls, len(clients))
	}
	for i, c := range clients {
		want := netip.AddrPortFrom(gateway4, uint16(c.LocalAddr().(*net.UDPAddr).Port))
		if calls[i].src != want || calls[i].dst != netip.AddrPortFrom(guest4, 53) {
			t.Errorf("flow %d: src %v dst %v; want src %v dst %v", i, calls[i].src, calls[i].dst, want, netip.AddrPortFrom(guest4, 53))
		}
	}
}

func TestUDPFlowEndsWhenIdle(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d, UDPIdleTimeout: 100 * time.Millisecond})
	port, _ := addUDP(t, r, d)
	c := udpClient(t, lo4, port)

	if got := exchange(t, c, "one"); got != "echo:one" {
		t.Fatalf("reply = %q; want %q", got, "echo:one")
	}
	conns := d.Conns()
	if len(conns) != 1 {
		t.Fatalf("flows = %d; want 1", len(conns))
	}
	select {
	case <-conns[0].closed:
	case <-time.After(5 * time.Second):
		t.Fatal("idle flow not closed 5s after a 100ms idle timeout")
	}
	if got := exchange(t, c, "two"); got != "echo:two" {
		t.Fatalf("reply after idle expiry = %q; want %q", got, "echo:two")
	}
	if n := len(d.Conns()); n != 2 {
		t.Fatalf("flows after idle expiry = %d; want 2 (a new one)", n)
	}
}

func TestUDPOneWayFlowStaysOpenWhileBusy(t *testing.T) {
	// The guest only receives (syslog-like): host→guest traffic alone must
	// keep the flow alive.
	sink, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo4, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d, UDPIdleTimeout: time.Second})
	port := freePort(t, "udp", lo4)
	if _, err := r.Add(context.Background(), Rule{Proto: "udp", HostAddr: lo4, HostPort: port, GuestPort: 514}); err != nil {
		t.Fatal(err)
	}
	d.route(netip.AddrPortFrom(guest4, 514), sink.LocalAddr().(*net.UDPAddr).AddrPort())
	c := udpClient(t, lo4, port)
	buf := make([]byte, 1500)
	for i := range 20 { // 20 × 100ms: twice the idle timeout, never idle for long
		c.Write([]byte(fmt.Sprint(i)))
		sink.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := sink.Read(buf); err != nil || string(buf[:n]) != fmt.Sprint(i) {
			t.Fatalf("guest received %q, %v; want %q", buf[:n], err, fmt.Sprint(i))
		}
		time.Sleep(100 * time.Millisecond) // pacing the traffic, not waiting for a result
	}
	conns := d.Conns()
	if len(conns) != 1 {
		t.Fatalf("flows = %d; want 1 (a busy flow must not expire)", len(conns))
	}
	select {
	case <-conns[0].closed:
		t.Fatal("busy one-way flow was closed")
	default:
	}
}

func TestRemoveClosesUDPSocketAndFlows(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	port, id := addUDP(t, r, d)
	c := udpClient(t, lo4, port)
	exchange(t, c, "hi")

	if err := r.Remove(id); err != nil {
		t.Fatalf("Remove(%d) = %v", id, err)
	}
	// At once: the port is free.
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(lo4, port).String())
	if err != nil {
		t.Fatalf("bind %v right after Remove: %v; want the port free", port, err)
	}
	pc.Close()
	select {
	case <-d.Conns()[0].closed:
	case <-time.After(5 * time.Second):
		t.Fatal("flow not closed 5s after Remove")
	}
}
