package portfwd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestManyTCP: every port of a Many forwards to its guest port, a busy
// port is skipped, and on dual-stack sockets an IPv4 client goes to the
// IPv4 guest and an IPv6 one to the IPv6 guest.
func TestManyTCP(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d, Plan: plan6})
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bp := uint16(busy.Addr().(*net.TCPAddr).Port)
	p1, p2 := freePort(t, "tcp", lo4), freePort(t, "tcp", lo4)
	echo := tcpEchoServer(t, lo4)
	for _, g := range []netip.Addr{guest4, guest6} {
		d.route(netip.AddrPortFrom(g, 81), echo)
		d.route(netip.AddrPortFrom(g, 82), echo)
	}
	family := []netip.Addr{lo4}
	host := netip.Addr{} // dual-stack
	if !haveIPv6Loopback() {
		host = lo4
	} else {
		family = append(family, lo6)
	}
	n, err := r.AddMany(context.Background(), Many{Proto: "tcp", HostAddr: host,
		Ports: []PortPair{{p1, 81}, {bp, 99}, {p2, 82}}})
	if err != nil || n != 2 {
		t.Fatalf("AddMany = %d, %v; want 2 (the busy port skipped), nil", n, err)
	}
	for _, local := range family {
		for _, p := range []uint16{p1, p2} {
			c := dialFwd(t, local, local, p)
			io.WriteString(c, "hi")
			c.CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != "hi" {
				t.Errorf("port %d from %v: %q, %v", p, local, got, err)
			}
			c.Close()
		}
	}
	want := map[netip.AddrPort]bool{}
	for _, c := range d.Calls() {
		want[c.dst] = true
	}
	for _, g := range family {
		guest := guest4
		if g.Is6() {
			guest = guest6
		}
		for _, gp := range []uint16{81, 82} {
			if !want[netip.AddrPortFrom(guest, gp)] {
				t.Errorf("no dial to %v; dials: %v", netip.AddrPortFrom(guest, gp), d.Calls())
			}
		}
	}
}

// TestManyUDP: a datagram to a port of a Many reaches its guest port and
// the reply comes back, twice (the socket is a forward of its own after
// the first).
func TestManyUDP(t *testing.T) {
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	p := freePort(t, "udp", lo4)
	d.route(netip.AddrPortFrom(guest4, 53), udpEchoServer(t, lo4))
	if n, err := r.AddMany(context.Background(), Many{Proto: "udp", HostAddr: lo4, Ports: []PortPair{{p, 53}}}); err != nil || n != 1 {
		t.Fatalf("AddMany = %d, %v", n, err)
	}
	c := udpClient(t, lo4, p)
	for _, m := range []string{"one", "two"} {
		if got := exchange(t, c, m); got != "echo:"+m {
			t.Errorf("reply %q, want %q", got, m)
		}
	}
}

// TestManyOutOfFiles: EMFILE fails the whole Many and keeps nothing bound,
// as pasta gives up on a spec it cannot open enough sockets for.
func TestManyOutOfFiles(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	d := newFakeDialer()
	r := startRegistry(t, Config{Dialer: d})
	// Far more ports than there are descriptors left (some may be busy:
	// those cost no descriptor).
	var ports []PortPair
	if int(lim.Cur) < 30000 {
		for p := 1; p <= min(2*int(lim.Cur), 65535); p++ {
			ports = append(ports, PortPair{uint16(p), 80})
		}
	} else {
		t.Skipf("RLIMIT_NOFILE %d: too many ports to try", lim.Cur)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own (the ports are many)")
	}
	before := countFDs(t)
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if uerr := unix.Unshare(unix.CLONE_NEWNET); uerr != nil {
			err = uerr
			return
		}
		_, err = r.AddMany(context.Background(), Many{Proto: "tcp", HostAddr: netip.IPv4Unspecified(), Ports: ports})
	}()
	<-done
	if !errors.Is(err, ErrNoFiles) {
		t.Fatalf("AddMany of %d ports with %d descriptors = %v, want ErrNoFiles", len(ports), lim.Cur, err)
	}
	if after := countFDs(t); after > before {
		t.Errorf("%d descriptors before, %d after a failed AddMany", before, after)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
