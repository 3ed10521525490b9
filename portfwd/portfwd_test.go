package portfwd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAddValidatesAndResolves(t *testing.T) {
	v4only := Config{Plan: plan4}
	dual := Config{Plan: plan6}
	a := netip.MustParseAddr
	tests := []struct {
		name      string
		cfg       Config
		rule      Rule // HostPort 0 is replaced by a free port unless badPort
		badPort   bool
		wantField string // "" = must succeed
		wantHost  netip.Addr
		wantGuest netip.Addr
	}{
		{"defaults", v4only, Rule{Proto: "tcp"}, false, "", a("0.0.0.0"), guest4},
		{"unspecified guest is the default guest", v4only, Rule{Proto: "udp", HostAddr: lo4, GuestAddr: a("0.0.0.0")}, false, "", lo4, guest4},
		{"explicit guest", v4only, Rule{Proto: "tcp", HostAddr: lo4, GuestAddr: a("10.0.2.15")}, false, "", lo4, a("10.0.2.15")},
		{"IPv6 host, IPv6 guest by default", dual, Rule{Proto: "tcp", HostAddr: lo6}, false, "", lo6, guest6},
		{":: host, IPv6 guest by default", dual, Rule{Proto: "tcp", HostAddr: a("::")}, false, "", a("::"), guest6},
		{"IPv6 host, IPv6 off: IPv4 guest", v4only, Rule{Proto: "tcp", HostAddr: lo6}, false, "", lo6, guest4},
		{"0.0.0.0 host with IPv6 on: IPv4 guest", dual, Rule{Proto: "tcp", HostAddr: a("0.0.0.0")}, false, "", a("0.0.0.0"), guest4},
		{"IPv4-mapped host is IPv4", v4only, Rule{Proto: "tcp", HostAddr: a("::ffff:127.0.0.1")}, false, "", lo4, guest4},
		{"empty proto", v4only, Rule{}, false, "proto", netip.Addr{}, netip.Addr{}},
		{"upper-case proto", v4only, Rule{Proto: "TCP"}, false, "proto", netip.Addr{}, netip.Addr{}},
		{"sctp", v4only, Rule{Proto: "sctp"}, false, "proto", netip.Addr{}, netip.Addr{}},
		{"multicast host", v4only, Rule{Proto: "udp", HostAddr: a("224.0.0.1")}, false, "host_addr", netip.Addr{}, netip.Addr{}},
		{"host port 0", v4only, Rule{Proto: "tcp", GuestPort: 80}, true, "host_port", netip.Addr{}, netip.Addr{}},
		{"guest outside the network", v4only, Rule{Proto: "tcp", GuestAddr: a("8.8.8.8")}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"guest is the gateway", v4only, Rule{Proto: "tcp", GuestAddr: gateway4}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"guest is the network address", v4only, Rule{Proto: "tcp", GuestAddr: a("10.0.2.0")}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"guest is the broadcast address", v4only, Rule{Proto: "tcp", GuestAddr: a("10.0.2.255")}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"IPv6 guest with IPv6 off", v4only, Rule{Proto: "tcp", GuestAddr: guest6}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"IPv6 guest outside fd00::/64", dual, Rule{Proto: "tcp", GuestAddr: a("fd00:1::100")}, false, "guest_addr", netip.Addr{}, netip.Addr{}},
		{"guest port 0", v4only, Rule{Proto: "tcp", HostAddr: lo4}, false, "guest_port", netip.Addr{}, netip.Addr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rule.HostAddr.Is6() && !tt.rule.HostAddr.Is4In6() && !haveIPv6Loopback() {
				t.Skip("no IPv6 here")
			}
			tt.cfg.Dialer = newFakeDialer()
			r := New(tt.cfg)
			t.Cleanup(func() { runDone(t, r) })
			rule := tt.rule
			if !tt.badPort {
				host := rule.HostAddr.Unmap()
				if !host.IsValid() || host.IsUnspecified() || host.IsMulticast() {
					host = lo4
					if rule.HostAddr.Is6() && !rule.HostAddr.Is4In6() {
						host = lo6
					}
				}
				rule.HostPort = freePort(t, "tcp", host)
				if rule.GuestPort == 0 && tt.wantField != "guest_port" {
					rule.GuestPort = 80
				}
			}
			id, err := r.Add(context.Background(), rule)
			if tt.wantField != "" {
				var ae *ArgError
				if !errors.As(err, &ae) || ae.Field != tt.wantField {
					t.Fatalf("Add(%v) = %d, %v; want *ArgError{Field: %q}", rule, id, err, tt.wantField)
				}
				if l := r.List(); len(l) != 0 {
					t.Fatalf("List after a failed Add = %v; want empty", l)
				}
				return
			}
			if err != nil {
				t.Fatalf("Add(%v) = %v; want success", rule, err)
			}
			want := []Entry{{ID: 1, Rule: Rule{Proto: rule.Proto, HostAddr: tt.wantHost, HostPort: rule.HostPort, GuestAddr: tt.wantGuest, GuestPort: rule.GuestPort}}}
			if got := r.List(); !reflect.DeepEqual(got, want) {
				t.Fatalf("List = %v; want %v", got, want)
			}
		})
	}
}

// runDone runs r with a cancelled ctx: the way to release a Registry that
// was never run.
func runDone(t *testing.T, r *Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Run(ctx); err != nil {
		t.Errorf("Run(cancelled ctx) = %v", err)
	}
}

func TestAddBusyPortFailsAndAddsNothing(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			r := startRegistry(t, Config{Dialer: newFakeDialer()})
			var busy io.Closer
			var port uint16
			var err error
			if proto == "tcp" {
				var ln net.Listener
				ln, err = net.Listen("tcp4", "127.0.0.1:0")
				busy, port = ln, uint16(ln.Addr().(*net.TCPAddr).Port)
			} else {
				var pc net.PacketConn
				pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
				busy, port = pc, uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			}
			if err != nil {
				t.Fatal(err)
			}
			rule := Rule{Proto: proto, HostAddr: lo4, HostPort: port, GuestPort: 80}
			id, err := r.Add(context.Background(), rule)
			var be *BindError
			if !errors.As(err, &be) || !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("Add(%v) on a busy port = %d, %v; want *BindError wrapping EADDRINUSE", rule, id, err)
			}
			if l := r.List(); len(l) != 0 {
				t.Fatalf("List after a failed Add = %v; want empty", l)
			}
			busy.Close()
			// The failure used up no ID, as in slirp4netns.
			if id, err := r.Add(context.Background(), rule); err != nil || id != 1 {
				t.Fatalf("Add(%v) once the port is free = %d, %v; want 1, nil", rule, id, err)
			}
		})
	}
}

func TestAddDuplicateFailsAndAddsNothing(t *testing.T) {
	r := startRegistry(t, Config{Dialer: newFakeDialer()})
	port := freePort(t, "tcp", lo4)
	rule := Rule{Proto: "tcp", HostAddr: lo4, HostPort: port, GuestPort: 80}
	if _, err := r.Add(context.Background(), rule); err != nil {
		t.Fatalf("Add(%v) = %v", rule, err)
	}
	dup := rule
	dup.GuestPort = 81 // a different guest port does not make it another forward
	id, err := r.Add(context.Background(), dup)
	var de *DuplicateError
	if !errors.As(err, &de) || de.ID != 1 {
		t.Fatalf("Add(%v) again = %d, %v; want *DuplicateError{ID: 1}", dup, id, err)
	}
	if l := r.List(); len(l) != 1 || l[0].GuestPort != 80 {
		t.Fatalf("List after a duplicate Add = %v; want only the first rule", l)
	}
	// The same port in the other protocol is another forward.
	udp := rule
	udp.Proto = "udp"
	if id, err := r.Add(context.Background(), udp); err != nil || id != 2 {
		t.Fatalf("Add(%v) = %d, %v; want 2, nil", udp, id, err)
	}
}

func TestIDsAreNeverReused(t *testing.T) {
	r := startRegistry(t, Config{Dialer: newFakeDialer()})
	add := func(want int) {
		t.Helper()
		rule := Rule{Proto: "tcp", HostAddr: lo4, HostPort: freePort(t, "tcp", lo4), GuestPort: 80}
		if id, err := r.Add(context.Background(), rule); err != nil || id != want {
			t.Fatalf("Add(%v) = %d, %v; want %d, nil", rule, id, err, want)
		}
	}
	remove := func(id int) {
		t.Helper()
		if err := r.Remove(id); err != nil {
			t.Fatalf("Remove(%d) = %v", id, err)
		}
	}
	add(1)
	add(2)
	remove(2)
	add(3)
	remove(1)
	add(4)
	if err := r.Remove(2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove(2) twice = %v; want ErrNotFound", err)
	}
	if err := r.Remove(99); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove(99) = %v; want ErrNotFound", err)
	}
	var ids []int
	for _, e := range r.List() {
		ids = append(ids, e.ID)
	}
	if !reflect.DeepEqual(ids, []int{3, 4}) {
		t.Fatalf("List IDs = %v; want [3 4]", ids)
	}
}

func TestForwardAddedBeforeRunIsServedByRun(t *testing.T) {
	checkNoLeaks(t)
	d := newFakeDialer()
	r := New(Config{Dialer: d, Plan: plan4, Logf: quietLogf(t)})
	port, _ := addTCP(t, r, d, lo4, netip.Addr{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c := dialFwd(t, lo4, lo4, port)
	io.WriteString(c, "early")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "early" {
		t.Fatalf("echo through a forward added before Run = %q, %v", got, err)
	}
}

func TestRunShutdownClosesEverythingAndLeaksNothing(t *testing.T) {
	checkNoLeaks(t)
	d := newFakeDialer()
	hung := make(chan struct{}, 1)
	echo := tcpEchoServer(t, lo4)
	d.hookTCP = func(ctx context.Context, _, dst netip.AddrPort) (net.Conn, error) {
		if dst.Port() == 81 { // a black-holed guest port
			hung <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", echo.String())
	}
	r := New(Config{Dialer: d, Plan: plan4, Logf: quietLogf(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	tcpPort, _ := addTCP(t, r, d, lo4, netip.Addr{})
	hangPort := freePort(t, "tcp", lo4)
	if _, err := r.Add(context.Background(), Rule{Proto: "tcp", HostAddr: lo4, HostPort: hangPort, GuestPort: 81}); err != nil {
		t.Fatal(err)
	}
	udpPort, _ := addUDP(t, r, d)

	live := dialFwd(t, lo4, lo4, tcpPort) // an open TCP flow
	io.WriteString(live, "x")
	io.ReadFull(live, make([]byte, 1))
	dialFwd(t, lo4, lo4, hangPort) // a flow stuck in its dial
	<-hung
	exchange(t, udpClient(t, lo4, udpPort), "x") // an open UDP flow

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after cancel")
	}
	// Run has returned: every socket is closed already.
	if c, err := net.Dial("tcp", netip.AddrPortFrom(lo4, tcpPort).String()); err == nil {
		c.Close()
		t.Errorf("TCP forward port still accepts after Run returned")
	}
	if pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(lo4, udpPort).String()); err != nil {
		t.Errorf("UDP forward port still bound after Run returned: %v", err)
	} else {
		pc.Close()
	}
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := live.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("live flow read after shutdown = %v; want it closed", err)
	}
	if _, err := r.Add(context.Background(), Rule{Proto: "tcp", HostAddr: lo4, HostPort: freePort(t, "tcp", lo4), GuestPort: 80}); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Run returned = %v; want ErrClosed", err)
	}
	if err := r.Run(context.Background()); err == nil {
		t.Errorf("second Run = nil; want an error")
	}
}

func TestAddPrivilegedPortIsABindError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may bind privileged ports")
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil && strings.TrimSpace(string(b)) == "0" {
		t.Skip("ip_unprivileged_port_start is 0: no port is privileged here")
	}
	r := startRegistry(t, Config{Dialer: newFakeDialer()})
	rule := Rule{Proto: "tcp", HostAddr: lo4, HostPort: 1, GuestPort: 80}
	id, err := r.Add(context.Background(), rule)
	var be *BindError
	if !errors.As(err, &be) || !errors.Is(err, syscall.EACCES) {
		t.Fatalf("Add(%v) = %d, %v; want *BindError wrapping EACCES", rule, id, err)
	}
	if l := r.List(); len(l) != 0 {
		t.Fatalf("List after a failed Add = %v; want empty", l)
	}
}

// A forward bound to an interface (pasta's %IFNAME): to lo it works, to an
// interface that does not exist it fails at Add, saying which.
func TestForwardBoundToInterface(t *testing.T) {
	checkNoLeaks(t)
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d, Plan: plan4, Logf: quietLogf(t)})
	ctx := context.Background()
	port := freePort(t, "tcp", lo4)
	if _, err := r.Add(ctx, Rule{Proto: "tcp", HostAddr: lo4, HostPort: port, HostIfname: "lo", GuestPort: 80}); err != nil {
		t.Fatalf("Add bound to lo: %v", err)
	}
	_, err := r.Add(ctx, Rule{Proto: "tcp", HostAddr: lo4, HostPort: freePort(t, "tcp", lo4), HostIfname: "nosuch0", GuestPort: 80})
	if err == nil || !strings.Contains(err.Error(), "bind to interface nosuch0") {
		t.Errorf("Add bound to a missing interface = %v, want an error naming it", err)
	}
}
