package portfwd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// addTCP registers a TCP forward from hostAddr:(a free port) to the guest
// address guest:80 routed to a fresh echo server, and returns the host port.
func addTCP(t *testing.T, r *Registry, d *fakeDialer, hostAddr, guest netip.Addr) (uint16, int) {
	t.Helper()
	port := freePort(t, "tcp", hostAddr)
	rule := Rule{Proto: "tcp", HostAddr: hostAddr, HostPort: port, GuestAddr: guest, GuestPort: 80}
	id, err := r.Add(context.Background(), rule)
	if err != nil {
		t.Fatalf("Add(%v) = %v", rule, err)
	}
	resolved := guest
	if !resolved.IsValid() {
		resolved = r.List()[len(r.List())-1].GuestAddr
	}
	d.route(netip.AddrPortFrom(resolved, 80), tcpEchoServer(t, lo4))
	return port, id
}

func TestTCPEchoWithHalfClose(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	port, _ := addTCP(t, r, d, lo4, netip.Addr{})

	c := dialFwd(t, lo4, lo4, port)
	if _, err := io.WriteString(c, "hello, guest"); err != nil {
		t.Fatalf("write: %v", err)
	}
	// The echo server answers only after it sees EOF, and half-closes after
	// echoing: ReadAll returns only if both half-closes crossed the forward.
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello, guest" {
		t.Fatalf("ReadAll after CloseWrite = %q, %v; want %q, nil", got, err, "hello, guest")
	}
}

func TestTCPTransfer2MiBIntact(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	port, _ := addTCP(t, r, d, lo4, netip.Addr{})

	data := make([]byte, 2<<20)
	rand.Read(data)
	c := dialFwd(t, lo4, lo4, port)
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		_, werr = c.Write(data)
		c.CloseWrite()
	})
	h := sha256.New()
	n, rerr := io.Copy(h, c)
	wg.Wait()
	if werr != nil || rerr != nil {
		t.Fatalf("write: %v, read: %v", werr, rerr)
	}
	if want := sha256.Sum256(data); n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echoed %d bytes, sha256 %x; want %d bytes, sha256 %x", n, h.Sum(nil), len(data), want)
	}
}

func TestTCPSourceAddressSeenByGuest(t *testing.T) {
	v6 := haveIPv6Loopback()
	tests := []struct {
		name             string
		hostAddr, client netip.Addr // the listener's address, the client's local address
		guest            netip.Addr // zero: the default for hostAddr
		wantSrc          netip.Addr
		needV6           bool
	}{
		{"loopback client appears as gateway", lo4, lo4, netip.Addr{}, gateway4, false},
		{"127.0.0.2 is loopback too", netip.IPv4Unspecified(), netip.MustParseAddr("127.0.0.2"), netip.Addr{}, gateway4, false},
		{"::1 appears as the IPv6 gateway", lo6, lo6, netip.Addr{}, gateway6, true},
		{"::1 to an IPv4 guest appears as the IPv4 gateway", lo6, lo6, guest4, gateway4, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needV6 && !v6 {
				t.Skip("no IPv6 loopback here")
			}
			d := newFakeDialer()
			r := startRegistry(t, Config{Dialer: d, Plan: plan6})
			port, _ := addTCP(t, r, d, tt.hostAddr, tt.guest)
			hostAddr := tt.hostAddr
			if hostAddr.IsUnspecified() {
				hostAddr = lo4
			}
			c := dialFwd(t, tt.client, hostAddr, port)
			io.WriteString(c, "x")
			c.CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != "x" {
				t.Fatalf("echo = %q, %v; want %q, nil", got, err, "x")
			}
			calls := d.Calls()
			if len(calls) != 1 {
				t.Fatalf("dialer calls = %v; want 1", calls)
			}
			want := netip.AddrPortFrom(tt.wantSrc, uint16(c.LocalAddr().(*net.TCPAddr).Port))
			if calls[0].src != want {
				t.Errorf("client %v: guest saw src %v; want %v", c.LocalAddr(), calls[0].src, want)
			}
		})
	}
}

func TestSrcForNonLoopbackClients(t *testing.T) {
	r := New(Config{Dialer: newFakeDialer(), Plan: plan6})
	ap := netip.MustParseAddrPort
	tests := []struct {
		client netip.AddrPort
		guest  netip.Addr
		want   netip.AddrPort
	}{
		{ap("192.0.2.7:4000"), guest4, ap("192.0.2.7:4000")},                                 // a LAN client keeps its address
		{ap("[2001:db8::7]:4000"), guest6, ap("[2001:db8::7]:4000")},                         // and in IPv6
		{ap("[::ffff:192.0.2.7]:4000"), guest4, ap("192.0.2.7:4000")},                        // mapped is IPv4
		{ap("10.0.2.50:4000"), guest4, ap("10.0.2.2:4000")},                                  // inside the virtual network
		{ap("169.254.1.1:4000"), guest4, ap("10.0.2.2:4000")},                                // link-local
		{ap("[fe80::1%eth0]:4000"), guest6, ap("[fd00::2]:4000")},                            // link-local, zoned
		{ap("192.0.2.7:4000"), guest6, ap("[fd00::2]:4000")},                                 // other family
		{ap("[2001:db8::7]:4000"), guest4, ap("10.0.2.2:4000")},                              // other family
		{ap("127.0.0.1:4000"), guest4, ap("10.0.2.2:4000")},                                  // loopback
		{ap("[::1]:4000"), guest6, ap("[fd00::2]:4000")},                                     // loopback
		{ap("[::ffff:127.0.0.1]:4000"), guest4, ap("10.0.2.2:4000")},                         // mapped loopback
		{ap("[fd00::5]:4000"), guest6, ap("[fd00::2]:4000")},                                 // inside the IPv6 network
		{ap("[2001:db8::7]:4000"), netip.MustParseAddr("fd00::9"), ap("[2001:db8::7]:4000")}, // any guest
	}
	for _, tt := range tests {
		if got := r.srcFor(tt.client, tt.guest); got != tt.want {
			t.Errorf("srcFor(%v, %v) = %v; want %v", tt.client, tt.guest, got, tt.want)
		}
	}
}

func TestTCPDialFailureResetsClient(t *testing.T) {
	d := newFakeDialer()
	d.hookTCP = func(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
		return nil, syscall.ECONNREFUSED
	}
	r := startRegistry(t, Config{Dialer: d})
	port, _ := addTCP(t, r, d, lo4, netip.Addr{})
	// The reset can beat connect(2)'s own return on loopback.
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo4, port).String())
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client after a refused guest dial: %v; want ECONNRESET", err)
	}
}

func TestTCPDialRetriesFromAnyPortWhenSourceInUse(t *testing.T) {
	d := newFakeDialer()
	echo := tcpEchoServer(t, lo4)
	d.hookTCP = func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
		if src.Port() != 0 {
			return nil, fmt.Errorf("stack: bind %v: %w", src, syscall.EADDRINUSE)
		}
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", echo.String())
	}
	r := startRegistry(t, Config{Dialer: d})
	port, _ := addTCP(t, r, d, lo4, netip.Addr{})
	c := dialFwd(t, lo4, lo4, port)
	io.WriteString(c, "x")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "x" {
		t.Fatalf("echo = %q, %v; want %q, nil", got, err, "x")
	}
	calls := d.Calls()
	if len(calls) != 2 || calls[0].src.Port() == 0 || calls[1].src != netip.AddrPortFrom(gateway4, 0) {
		t.Fatalf("dial calls = %v; want one from the client's port, then one from %v", calls, netip.AddrPortFrom(gateway4, 0))
	}
}

func TestRemoveAbortsPendingDial(t *testing.T) {
	d := newFakeDialer()
	dialing := make(chan struct{}, 1)
	d.hookTCP = func(ctx context.Context, _, _ netip.AddrPort) (net.Conn, error) {
		dialing <- struct{}{}
		<-ctx.Done() // a black-holed guest port
		return nil, ctx.Err()
	}
	r := startRegistry(t, Config{Dialer: d})
	port, id := addTCP(t, r, d, lo4, netip.Addr{})
	c := dialFwd(t, lo4, lo4, port)
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		t.Fatal("the forward never dialed the guest")
	}
	if err := r.Remove(id); err != nil {
		t.Fatalf("Remove(%d) = %v", id, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("client read after Remove during the dial = %v; want the connection closed", err)
	}
	// startRegistry's leak check proves the dialing goroutine ended.
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRemoveClosesTCPListenerAndFlows(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	port, id := addTCP(t, r, d, lo4, netip.Addr{})

	live := dialFwd(t, lo4, lo4, port)
	io.WriteString(live, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(live, buf); err != nil {
		t.Fatalf("live flow before Remove: %v", err)
	}
	if err := r.Remove(id); err != nil {
		t.Fatalf("Remove(%d) = %v", id, err)
	}
	// At once: no waiting before the port is refused.
	if c, err := net.Dial("tcp", netip.AddrPortFrom(lo4, port).String()); err == nil {
		c.Close()
		t.Fatalf("dial %v right after Remove succeeded; want connection refused", port)
	}
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := live.Read(buf); err == nil || isTimeout(err) {
		t.Fatalf("live flow read after Remove = %d, %v; want it closed", n, err)
	}
	// The same rule can be added again, under a new ID.
	rule := Rule{Proto: "tcp", HostAddr: lo4, HostPort: port, GuestPort: 80}
	id2, err := r.Add(context.Background(), rule)
	if err != nil || id2 != id+1 {
		t.Fatalf("re-Add(%v) = %d, %v; want %d, nil", rule, id2, err, id+1)
	}
	c := dialFwd(t, lo4, lo4, port)
	io.WriteString(c, "again")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "again" {
		t.Fatalf("echo through the re-added forward = %q, %v", got, err)
	}
}
