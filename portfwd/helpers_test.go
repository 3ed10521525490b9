package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/usernet/usernet/internal/testutil"
	"github.com/usernet/usernet/netplan"
)

// Test addresses of the virtual network, as slirp4netns's defaults.
var (
	guest4   = netip.MustParseAddr("10.0.2.100")
	guest6   = netip.MustParseAddr("fd00::100")
	gateway4 = netip.MustParseAddr("10.0.2.2")
	gateway6 = netip.MustParseAddr("fd00::2")
	lo4      = netip.MustParseAddr("127.0.0.1")
	lo6      = netip.IPv6Loopback()

	// plan4 is slirp4netns's default plan; plan6 adds its IPv6 network
	// with a guest address the Registry knows (slirp4netns's guest takes
	// one by SLAAC, which leaves Guest6 unset).
	plan4 = slirpPlan(false)
	plan6 = func() netplan.Plan { p := slirpPlan(true); p.Guest6 = guest6; return p }()
)

func slirpPlan(v6 bool) netplan.Plan {
	p, err := netplan.Slirp(netip.MustParsePrefix("10.0.2.0/24"), v6)
	if err != nil {
		panic(err)
	}
	return p
}

// dialRecord is one call of the fake Dialer.
type dialRecord struct {
	proto    string
	src, dst netip.AddrPort
}

func (r dialRecord) String() string { return fmt.Sprintf("%s %v->%v", r.proto, r.src, r.dst) }

// fakeDialer "dials into the namespace" by connecting to a loopback server:
// targets maps a guest address to the real server. It records every call.
type fakeDialer struct {
	mu      sync.Mutex
	targets map[netip.AddrPort]netip.AddrPort
	calls   []dialRecord
	conns   []*trackedConn
	// hookTCP, if set, replaces the TCP dial (after recording the call).
	hookTCP func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
}

func newFakeDialer() *fakeDialer {
	return &fakeDialer{targets: map[netip.AddrPort]netip.AddrPort{}}
}

// route makes dials to the guest address dst reach the loopback server at real.
func (d *fakeDialer) route(dst, real netip.AddrPort) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.targets[dst] = real
}

func (d *fakeDialer) record(proto string, src, dst netip.AddrPort) (netip.AddrPort, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, dialRecord{proto, src, dst})
	real, ok := d.targets[dst]
	return real, ok
}

func (d *fakeDialer) track(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, closed: make(chan struct{})}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.conns = append(d.conns, tc)
	return tc
}

func (d *fakeDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	real, ok := d.record("tcp", src, dst)
	if d.hookTCP != nil {
		return d.hookTCP(ctx, src, dst)
	}
	if !ok {
		return nil, fmt.Errorf("fake dialer: no route to %v", dst)
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", real.String())
	if err != nil {
		return nil, err
	}
	return c, nil // a *net.TCPConn, which has CloseWrite
}

func (d *fakeDialer) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	real, ok := d.record("udp", src, dst)
	if !ok {
		return nil, fmt.Errorf("fake dialer: no route to %v", dst)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(real))
	if err != nil {
		return nil, err
	}
	return d.track(c), nil
}

func (d *fakeDialer) Calls() []dialRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]dialRecord(nil), d.calls...)
}

func (d *fakeDialer) Conns() []*trackedConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*trackedConn(nil), d.conns...)
}

// trackedConn reports its Close.
type trackedConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// startRegistry runs a Registry for the test; cleanup stops it, checks that
// Run returned nil in time, and (registered first, so it runs last) that no
// goroutine outlived it.
func startRegistry(t *testing.T, cfg Config) *Registry {
	t.Helper()
	checkNoLeaks(t)
	if !cfg.Plan.Net4.IsValid() {
		cfg.Plan = plan4
	}
	if cfg.Logf == nil {
		cfg.Logf = quietLogf(t)
	}
	r := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Running, with its poller's descriptor open, before the test looks
	// (TestManyOutOfFiles counts descriptors).
	for {
		r.mu.Lock()
		st := r.mu.state
		r.mu.Unlock()
		if st != stateNew {
			break
		}
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return 10s after its ctx was cancelled")
		}
	})
	return r
}

// freePort returns a port that was free on addr a moment ago.
func freePort(t *testing.T, proto string, a netip.Addr) uint16 {
	t.Helper()
	network := proto + "4"
	if a.Is6() {
		network = proto + "6"
	}
	addr := netip.AddrPortFrom(a, 0).String()
	if proto == "tcp" {
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatalf("net.Listen(%q, %q): %v", network, addr, err)
		}
		defer ln.Close()
		return uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("net.ListenPacket(%q, %q): %v", network, addr, err)
	}
	defer pc.Close()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// tcpEchoServer plays the guest service: it echoes each connection until EOF,
// then half-closes. It returns its address.
func tcpEchoServer(t *testing.T, a netip.Addr) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatalf("echo server: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// udpEchoServer plays the guest service: it answers each datagram with
// "echo:" + the datagram.
func udpEchoServer(t *testing.T, a netip.Addr) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		t.Fatalf("udp echo server: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			pc.WriteToUDPAddrPort(append([]byte("echo:"), buf[:n]...), from)
		}
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// dialFwd connects a TCP client bound to local (port 0) to the forward at
// hostAddr:port.
func dialFwd(t *testing.T, local, hostAddr netip.Addr, port uint16) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
	c, err := d.Dial("tcp", netip.AddrPortFrom(hostAddr, port).String())
	if err != nil {
		t.Fatalf("dial forward %v from %v: %v", netip.AddrPortFrom(hostAddr, port), local, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// haveIPv6Loopback reports whether ::1 can be bound here.
func haveIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

var (
	quietLogf    = testutil.QuietLogf
	checkNoLeaks = testutil.CheckNoLeaks
)
