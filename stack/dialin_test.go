package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/portfwd"
	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// *Stack is what portfwd dials into the namespace with.
var _ portfwd.Dialer = (*Stack)(nil)

var guest6 = netip.MustParseAddr("fd00::100")

// guestEcho serves TCP echo with half-close on dst in the guest and reports
// the remote address of each accepted connection.
func guestEcho(t *testing.T, g *gvstack.Stack, dst netip.AddrPort) <-chan netip.AddrPort {
	t.Helper()
	peers := make(chan netip.AddrPort, 16)
	guestServe(t, g, dst, func(c net.Conn) {
		// A connection reset before Accept has no remote address any
		// more: report the zero value, which no test expects.
		var peer netip.AddrPort
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			peer = a.AddrPort()
		}
		select {
		case peers <- peer:
		default:
		}
		io.Copy(c, c)
		c.(*gonet.TCPConn).CloseWrite()
	})
	return peers
}

// guestServe listens on dst in the guest and runs serve for each
// connection, as serveListener.
func guestServe(t *testing.T, g *gvstack.Stack, dst netip.AddrPort, serve func(net.Conn)) {
	t.Helper()
	ln, err := gonet.ListenTCP(g, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()}, protoOf(dst.Addr()))
	if err != nil {
		t.Fatalf("guest ListenTCP(%v): %v", dst, err)
	}
	serveListener(t, ln, serve)
}

// guestRead is a server in the guest for one connection: it reads the
// first n bytes, says so on received, then reads to the end, whose error
// (nil: a FIN) it sends on ended.
type guestRead struct {
	received chan struct{}
	ended    chan error
}

func guestReader(t *testing.T, g *gvstack.Stack, dst netip.AddrPort, n int) *guestRead {
	t.Helper()
	r := &guestRead{received: make(chan struct{}), ended: make(chan error, 1)}
	guestServe(t, g, dst, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			r.ended <- err
			return
		}
		close(r.received)
		_, err := io.ReadAll(c)
		r.ended <- err
	})
	return r
}

// waitReceived waits until the first bytes have reached the guest.
func (r *guestRead) waitReceived(t *testing.T) {
	t.Helper()
	select {
	case <-r.received:
	case err := <-r.ended:
		t.Fatalf("guest server: %v before the first bytes arrived", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first bytes did not reach the guest")
	}
}

// wantReset waits for the guest's read to end and fails unless it ended
// in a reset.
func (r *guestRead) wantReset(t *testing.T, after string) {
	t.Helper()
	select {
	case err := <-r.ended:
		if err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("guest read after %s = %v; want connection reset (nil: a FIN, the stream looked complete)", after, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the guest's connection did not end after %s", after)
	}
}

// guestUDPEcho echoes datagrams on dst in the guest and reports their
// sources.
func guestUDPEcho(t *testing.T, g *gvstack.Stack, dst netip.AddrPort) <-chan netip.AddrPort {
	t.Helper()
	pc, err := gonet.DialUDP(g, &tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()}, nil, protoOf(dst.Addr()))
	if err != nil {
		t.Fatalf("guest DialUDP(bind %v): %v", dst, err)
	}
	from := make(chan netip.AddrPort, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			from <- a.(*net.UDPAddr).AddrPort()
			pc.WriteTo(buf[:n], a)
		}
	})
	return from
}

// addGuest6 gives the guest fd00::100/64 and waits for its DAD and for the
// default route the RAs teach it.
func addGuest6(t *testing.T, e *env) {
	t.Helper()
	waitSLAAC(t, e)
	pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(guest6), PrefixLen: 64}}
	if err := e.guest.AddProtocolAddress(1, pa, gvstack.AddressProperties{}); err != nil {
		t.Fatalf("guest AddProtocolAddress(%v): %v", guest6, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.ndp.mu.Lock()
		_, done := e.ndp.dad[tcpipAddr(guest6)]
		e.ndp.mu.Unlock()
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("DAD of %v did not finish", guest6)
}

func echoOver(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != msg {
		t.Fatalf("echo = %q, %v; want %q, nil (the guest's FIN after ours)", b, err, msg)
	}
}

func TestDialTCPIntoNamespaceKeepsSource(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v6       bool
		src, dst string
	}{
		{"gateway", false, "10.0.2.2:40000", "10.0.2.100:80"},
		{"client address", false, "192.0.2.7:5555", "10.0.2.100:80"},
		{"v4-mapped client", false, "[::ffff:192.0.2.8]:5556", "10.0.2.100:80"},
		{"gateway v6", true, "[fd00::2]:40000", "[fd00::100]:80"},
		{"client address v6", true, "[2001:db8::7]:5555", "[fd00::100]:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			goroutineLeakCheck(t)
			e, d := startDialEnv(t, tc.v6)
			src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
			peers := guestEcho(t, e.guest, dst)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.s.DialTCP(ctx, src, dst)
			if err != nil {
				t.Fatalf("DialTCP(%v, %v): %v", src, dst, err)
			}
			defer c.Close()
			want := netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			if got := <-peers; got != want {
				t.Errorf("guest accepted a connection from %v, want %v", got, want)
			}
			if got := c.LocalAddr().(*net.TCPAddr).AddrPort(); got != want {
				t.Errorf("LocalAddr() = %v, want %v", got, want)
			}
			if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != dst {
				t.Errorf("RemoteAddr() = %v, want %v", got, dst)
			}
			echoOver(t, c, "hello from "+tc.src)
			if got := d.dialed(); len(got) != 0 {
				t.Errorf("the guest's replies reached the forwarder, which dialed %v", got)
			}
		})
	}
}

func TestDialUDPIntoNamespaceKeepsSource(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v6       bool
		src, dst string
	}{
		{"gateway", false, "10.0.2.2:40000", "10.0.2.100:80"},
		{"client address", false, "192.0.2.7:5555", "10.0.2.100:80"},
		{"client address v6", true, "[2001:db8::7]:5555", "[fd00::100]:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			goroutineLeakCheck(t)
			e, d := startDialEnv(t, tc.v6)
			src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
			from := guestUDPEcho(t, e.guest, dst)

			c, err := e.s.DialUDP(src, dst)
			if err != nil {
				t.Fatalf("DialUDP(%v, %v): %v", src, dst, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for _, msg := range []string{"one", "two"} {
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Fatalf("Write(%q): %v", msg, err)
				}
				buf := make([]byte, 100)
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != msg {
					t.Fatalf("Read = %q, %v; want the echo %q", buf[:n], err, msg)
				}
				if got := <-from; got != src {
					t.Errorf("guest got the datagram from %v, want %v", got, src)
				}
			}
			if got := d.dialed(); len(got) != 0 {
				t.Errorf("the guest's replies reached the forwarder, which dialed %v", got)
			}
		})
	}
}

func TestDialTCPClosedGuestPortRefused(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	for _, src := range []string{"10.0.2.2:40000", "192.0.2.7:5555"} {
		c, err := e.s.DialTCP(context.Background(), netip.MustParseAddrPort(src), netip.MustParseAddrPort("10.0.2.100:81"))
		if err == nil {
			c.Close()
			t.Fatalf("DialTCP(%v → closed 10.0.2.100:81) succeeded", src)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("DialTCP(%v → closed port) = %v, want ECONNREFUSED", src, err)
		}
	}
}

func TestDialPicksFreePortWhenSourcePortTakenOrZero(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	dst := netip.MustParseAddrPort("10.0.2.100:80")
	peers := guestEcho(t, e.guest, dst)
	src := netip.MustParseAddrPort("192.0.2.7:5555")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	first, err := e.s.DialTCP(ctx, src, dst)
	if err != nil {
		t.Fatalf("DialTCP #1: %v", err)
	}
	defer first.Close()
	<-peers
	second, err := e.s.DialTCP(ctx, src, dst) // same 4-tuple: must move
	if err != nil {
		t.Fatalf("DialTCP #2 from the same source: %v", err)
	}
	defer second.Close()
	got := <-peers
	if got.Addr() != src.Addr() || got.Port() == src.Port() || got.Port() == 0 {
		t.Errorf("second connection from %v, want %v with another, non-zero port", got, src.Addr())
	}
	zero, err := e.s.DialTCP(ctx, netip.AddrPortFrom(src.Addr(), 0), dst)
	if err != nil {
		t.Fatalf("DialTCP from port 0: %v", err)
	}
	defer zero.Close()
	if got := <-peers; got.Port() == 0 {
		t.Errorf("connection from port 0 arrived from %v", got)
	}
	echoOver(t, second, "second")
	echoOver(t, first, "first")

	// UDP: the same source twice.
	guestUDPEcho(t, e.guest, dst)
	u1, err := e.s.DialUDP(src, dst)
	if err != nil {
		t.Fatalf("DialUDP #1: %v", err)
	}
	defer u1.Close()
	u2, err := e.s.DialUDP(src, dst)
	if err != nil {
		t.Fatalf("DialUDP #2 from the same source: %v", err)
	}
	defer u2.Close()
	if p := u2.LocalAddr().(*net.UDPAddr).AddrPort(); p.Port() == src.Port() || p.Port() == 0 {
		t.Errorf("second UDP conn bound to %v, want another port", p)
	}
}

func TestDialRejectsAddressesOutsideTheGuestNetwork(t *testing.T) {
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true)
	_, stackLink := pipe.New(guestMAC, stackMAC, 1500) // no guest: validation fails before any packet
	s, err := newStack(cfg, ethernet.New(stackLink))
	if err != nil {
		t.Fatalf("newStack: %v", err)
	}
	defer s.Close()
	for _, tc := range []struct{ src, dst string }{
		{"10.0.2.2:1", "192.0.2.1:80"},      // the outside
		{"10.0.2.2:1", "127.0.0.1:80"},      // loopback
		{"10.0.2.2:1", "10.0.2.2:80"},       // ourselves
		{"10.0.2.2:1", "10.0.2.3:53"},       // ourselves
		{"10.0.2.2:1", "10.0.2.255:80"},     // broadcast
		{"10.0.2.2:1", "10.0.2.0:80"},       // network address
		{"10.0.2.2:1", "10.0.2.100:0"},      // no port
		{"[fd00::2]:1", "[fd00::2]:80"},     // ourselves
		{"[fd00::2]:1", "[2001:db8::1]:80"}, // the outside
		{"10.0.2.50:1", "10.0.2.100:80"},    // a guest address as source
		{"127.0.0.1:1", "10.0.2.100:80"},    // loopback source
		{"[fe80::1]:1", "[fd00::100]:80"},   // link-local source
		{"[fd00::2]:1", "10.0.2.100:80"},    // families differ
	} {
		src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
		if c, err := s.DialTCP(context.Background(), src, dst); err == nil {
			c.Close()
			t.Errorf("DialTCP(%v, %v) succeeded, want an error", src, dst)
		}
		if c, err := s.DialUDP(src, dst); err == nil {
			c.Close()
			t.Errorf("DialUDP(%v, %v) succeeded, want an error", src, dst)
		}
	}
}

func TestDialTCPEndsWithContext(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// Nobody answers ARP for 10.0.2.99: the dial waits until ctx ends.
	c, err := e.s.DialTCP(ctx, netip.MustParseAddrPort("10.0.2.2:40000"), netip.MustParseAddrPort("10.0.2.99:80"))
	if err == nil {
		c.Close()
		t.Fatal("DialTCP to a silent address succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DialTCP = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("DialTCP took %v after its 200ms context", d)
	}
}

func TestShutdownEndsDialsAndClosesDialedConns(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	dst := netip.MustParseAddrPort("10.0.2.100:80")
	guestEcho(t, e.guest, dst)
	from := guestUDPEcho(t, e.guest, dst)
	gw := netip.MustParseAddrPort("10.0.2.2:0")

	tc, err := e.s.DialTCP(context.Background(), gw, dst)
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	defer tc.Close()
	uc, err := e.s.DialUDP(gw, dst)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer uc.Close()
	uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	uc.Write([]byte("x"))
	<-from
	if n, err := uc.Read(make([]byte, 10)); n != 1 || err != nil {
		t.Fatalf("UDP echo: %d bytes, %v", n, err)
	}

	pending := make(chan error, 1)
	go func() {
		c, err := e.s.DialTCP(context.Background(), gw, netip.MustParseAddrPort("10.0.2.99:80"))
		if err == nil {
			c.Close()
		}
		pending <- err
	}()
	reads := make(chan error, 2)
	for _, c := range []net.Conn{tc, uc} {
		go func() {
			_, err := c.Read(make([]byte, 10))
			reads <- err
		}()
	}

	e.stop(t) // Run must return: the dialed conns are members of the tracker

	select {
	case err := <-pending:
		if err == nil {
			t.Errorf("pending DialTCP succeeded across shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending DialTCP did not end with Run")
	}
	for range 2 {
		select {
		case err := <-reads:
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Read on a dialed conn after shutdown = %v, want a closed-conn error", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Read on a dialed conn still blocked after Run returned")
		}
	}
	if _, err := e.s.DialUDP(gw, dst); err == nil {
		t.Errorf("DialUDP after shutdown succeeded")
	}
}

func TestDialUDPClosedGuestPortReadsRefused(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	c, err := e.s.DialUDP(netip.MustParseAddrPort("10.0.2.2:40000"), netip.MustParseAddrPort("10.0.2.100:81"))
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Twice: the refusal is reported once per ICMP error, and the conn
	// stays usable.
	for i := range 2 {
		if _, err := c.Write([]byte("anyone?")); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("Write #%d: %v", i, err)
		}
		if _, err := c.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("Read #%d after ICMP port unreachable = %v, want ECONNREFUSED", i, err)
		}
	}
}

// startDialEnv starts a stack whose outbound dials are recorded (the
// guest's replies to a dial into the namespace must never reach them) and,
// with v6, gives the guest fd00::100.
func startDialEnv(t *testing.T, v6 bool) (*env, *redirect) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, v6)
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)
	if v6 {
		addGuest6(t, e)
	}
	return e, d
}

// A port forward's client that resets in the middle of an upload must
// reset the guest's connection too: passed on as a FIN, the truncated
// upload would look complete to the server in the namespace. This runs
// the real path: portfwd's relay into a dialedTCP.
func TestPortForwardClientResetResetsGuest(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	dst := netip.MustParseAddrPort("10.0.2.100:80")
	const upload = "the first part of an upload"
	guest := guestReader(t, e.guest, dst, len(upload))

	r := portfwd.New(portfwd.Config{Dialer: e.s, Plan: e.s.cfg.Plan, Logf: quietLogf(t)})
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("portfwd Run = %v", err)
		}
	})
	port := func() uint16 { // free a moment ago
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return portOf(l.Addr())
	}()
	lo := netip.MustParseAddr("127.0.0.1")
	if _, err := r.Add(ctx, portfwd.Rule{Proto: "tcp", HostAddr: lo, HostPort: port, GuestPort: dst.Port()}); err != nil {
		t.Fatalf("portfwd Add: %v", err)
	}

	c, err := net.Dial("tcp4", netip.AddrPortFrom(lo, port).String())
	if err != nil {
		t.Fatalf("dial the forward: %v", err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, upload); err != nil {
		t.Fatalf("client write: %v", err)
	}
	guest.waitReceived(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // RST
	guest.wantReset(t, "the client's reset")
}

// Abort resets the guest's connection and, with Close or the shutdown
// after it, leaves the Stack's flows once: Run returns, and without a
// negative WaitGroup counter.
func TestDialTCPAbortResetsGuestAndLeavesOnce(t *testing.T) {
	goroutineLeakCheck(t)
	e := startEnv(t, testConfig(t))
	dst := netip.MustParseAddrPort("10.0.2.100:80")
	guest := guestReader(t, e.guest, dst, 1)
	c, err := e.s.DialTCP(context.Background(), netip.MustParseAddrPort("10.0.2.2:0"), dst)
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	io.WriteString(c, "x")
	guest.waitReceived(t)
	c.(relay.Aborter).Abort()
	c.Close()
	c.(relay.Aborter).Abort()
	guest.wantReset(t, "Abort")
	e.stop(t)
}
