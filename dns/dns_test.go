package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestUDPQueryAnswered(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 0x1234, "example.com."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query to %v: %v", h.udpAddr, err)
	}
	wantReply(t, msg, 0x1234, "example.com.")
	if got := up.udpQueries.Load(); got != 1 {
		t.Errorf("upstream got %d UDP queries, want 1", got)
	}
}

func TestTCPQueryAnswered(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	c := dialTCP(t, h.tcpAddr)
	if err := writeMsg(c, query(t, 0x4321, "example.org.")); err != nil {
		t.Fatalf("write query: %v", err)
	}
	msg, err := readMsg(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	wantReply(t, msg, 0x4321, "example.org.")
	if got := up.tcpQueries.Load(); got != 1 {
		t.Errorf("upstream got %d TCP queries, want 1", got)
	}
}

// An upstream on a 127.0.0.x address other than 127.0.0.1 (systemd-resolved
// listens on 127.0.0.53) works: the forwarder dials the host's loopback.
func TestUpstreamOnOtherLoopbackAddress(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.53")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 7, "resolved.test."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query via upstream %v: %v", up.addr, err)
	}
	wantReply(t, msg, 7, "resolved.test.")
}

func TestIPv6(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "::1") // skips if there is no ::1
	h := startForwarder(t, "::1", Config{Upstream: up.addr}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 6, "v6.test."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query to %v: %v", h.udpAddr, err)
	}
	wantReply(t, msg, 6, "v6.test.")
	c := dialTCP(t, h.tcpAddr)
	if err := writeMsg(c, query(t, 66, "v6.test.")); err != nil {
		t.Fatalf("write query: %v", err)
	}
	msg, err = readMsg(c)
	if err != nil {
		t.Fatalf("TCP query to %v: %v", h.tcpAddr, err)
	}
	wantReply(t, msg, 66, "v6.test.")
}

func TestTCPPipelinedQueriesShareOneUpstreamConn(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	c := dialTCP(t, h.tcpAddr)
	// Both queries in one write: the second is in flight before the first
	// is answered.
	var both bytes.Buffer
	writeMsg(&both, query(t, 1, "one.test."))
	writeMsg(&both, query(t, 2, "two.test."))
	if _, err := c.Write(both.Bytes()); err != nil {
		t.Fatalf("write two queries: %v", err)
	}
	got := map[uint16]string{}
	for range 2 {
		msg, err := readMsg(c)
		if err != nil {
			t.Fatalf("read reply: %v", err)
		}
		r, err := parseReply(msg)
		if err != nil || r.A != answerA {
			t.Fatalf("reply = %+v, %v; want an answer with %v", r, err, answerA)
		}
		got[r.ID] = r.Name
	}
	want := map[uint16]string{1: "one.test.", 2: "two.test."}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replies (ID → name) = %v, want %v", got, want)
	}
	if n := up.tcpConns.Load(); n != 1 {
		t.Errorf("upstream saw %d TCP connections for one client connection, want 1", n)
	}
}

func TestIDsPreserved(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	c := dialTCP(t, h.tcpAddr)
	for _, id := range []uint16{0, 1, 0x00ff, 0x8000, 0xfffe, 0xffff} {
		name := fmt.Sprintf("id%d.test.", id)
		msg, err := udpExchange(h.udpAddr, query(t, id, name), 5*time.Second)
		if err != nil {
			t.Fatalf("UDP query with ID %#x: %v", id, err)
		}
		wantReply(t, msg, id, name)

		if err := writeMsg(c, query(t, id, name)); err != nil {
			t.Fatalf("TCP query with ID %#x: %v", id, err)
		}
		if msg, err = readMsg(c); err != nil {
			t.Fatalf("TCP reply to ID %#x: %v", id, err)
		}
		wantReply(t, msg, id, name)
	}
}

// Many clients at once, half of them using the same ID: each gets the
// answer to its own question.
func TestUDPConcurrentQueries(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	const n = 200
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := uint16(i)
			if i%2 == 1 {
				id = 0xabcd
			}
			name := fmt.Sprintf("client%d.test.", i)
			msg, err := udpExchange(h.udpAddr, query(t, id, name), 10*time.Second)
			if err != nil {
				errc <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			got, err := parseReply(msg)
			if want := (reply{ID: id, Name: name, A: answerA}); err != nil || got != want {
				errc <- fmt.Errorf("client %d: reply = %+v, %v; want %+v", i, got, err, want)
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// When more queries are in flight than the limit, the surplus is dropped
// without reaching the upstream.
func TestUDPDropsBeyondLimit(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.silent.Store(true)
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr, Timeout: time.Minute},
		func(f *Forwarder) { f.udpSem = make(chan struct{}, 2) })

	c, err := net.Dial("udp", h.udpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		if _, err := c.Write(query(t, uint16(i), "flood.test.")); err != nil {
			t.Fatalf("write query %d: %v", i, err)
		}
	}
	eventually(t, "3 dropped queries", func() bool { return h.f.udpDropped.Load() == 3 })
	eventually(t, "2 queries upstream", func() bool { return up.udpQueries.Load() == 2 })
}

// The forwarder ignores a response with the wrong ID and waits for the
// right one.
func TestUDPStrayReplyIgnored(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.stray.Store(true)
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 0x1111, "stray.test."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query: %v", err)
	}
	wantReply(t, msg, 0x1111, "stray.test.")
}

func TestTruncatedReplyPassedThrough(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.truncate.Store(true)
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 5, "big.test."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query: %v", err)
	}
	if r, err := parseReply(msg); err != nil || !r.Truncated || r.ID != 5 {
		t.Errorf("reply = %+v, %v; want ID 5 with TC set", r, err)
	}
}

func TestUDPUpstreamSilent(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.silent.Store(true)
	const timeout = 200 * time.Millisecond
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr, Timeout: timeout}, nil)

	msg, err := udpExchange(h.udpAddr, query(t, 9, "silent.test."), timeout+time.Second)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("UDP query to a silent upstream = %x, %v; want a client timeout", msg, err)
	}
	if n := up.udpQueries.Load(); n != 1 {
		t.Errorf("upstream got %d queries, want 1", n)
	}
	// The query's goroutine and socket go away at the timeout, while Serve
	// is still running.
	eventually(t, "the query's goroutine to exit", func() bool {
		return len(h.f.udpSem) == 0 && len(forwarderGoroutines()) == 3 // Serve, serveUDP, serveTCP
	})
	select {
	case err := <-h.done:
		t.Fatalf("Serve returned early: %v", err)
	default:
	}
}

func TestTCPUpstreamSilentClosesClient(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.silent.Store(true)
	const timeout = 200 * time.Millisecond
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr, Timeout: timeout}, nil)

	c := dialTCP(t, h.tcpAddr)
	start := time.Now()
	if err := writeMsg(c, query(t, 9, "silent.test.")); err != nil {
		t.Fatalf("write query: %v", err)
	}
	if msg, err := readMsg(c); err != io.EOF {
		t.Fatalf("read after a query to a silent upstream = %x, %v; want EOF", msg, err)
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("connection closed after %v, before the %v timeout", d, timeout)
	}
	eventually(t, "the upstream connection to be closed", func() bool { return up.tcpEOFs.Load() == 1 })
}

// A reused upstream connection that the upstream has closed is replaced
// and the query retried.
func TestTCPUpstreamClosedBetweenQueries(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.closeAfterReply.Store(true)
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	c := dialTCP(t, h.tcpAddr)
	for i := range uint16(3) {
		if err := writeMsg(c, query(t, i, "again.test.")); err != nil {
			t.Fatalf("write query %d: %v", i, err)
		}
		msg, err := readMsg(c)
		if err != nil {
			t.Fatalf("read reply %d: %v", i, err)
		}
		wantReply(t, msg, i, "again.test.")
	}
	if n := up.tcpConns.Load(); n != 3 {
		t.Errorf("upstream saw %d connections, want 3 (one per query)", n)
	}
}

func TestUDPMalformedIgnored(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	c, err := net.Dial("udp", h.udpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for n := range headerLen {
		if _, err := c.Write(bytes.Repeat([]byte{0xff}, n)); err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
	}
	resp, err := answer(query(t, 3, "loop.test."), false)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(resp) // a response, not a query: never forwarded

	// The forwarder still works, and only this query reached the upstream
	// (datagrams are handled in order).
	msg, err := udpExchange(h.udpAddr, query(t, 4, "fine.test."), 5*time.Second)
	if err != nil {
		t.Fatalf("UDP query after malformed ones: %v", err)
	}
	wantReply(t, msg, 4, "fine.test.")
	if n := up.udpQueries.Load(); n != 1 {
		t.Errorf("upstream got %d queries, want 1", n)
	}
}

func TestTCPMalformedClosed(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	resp, err := answer(query(t, 3, "loop.test."), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"empty message", []byte{0, 0}},
		{"short message", []byte{0, 5, 1, 2, 3, 4, 5}},
		{"response", append([]byte{0, byte(len(resp))}, resp...)},
	} {
		c := dialTCP(t, h.tcpAddr)
		if _, err := c.Write(tc.send); err != nil {
			t.Fatalf("%s: write: %v", tc.name, err)
		}
		if msg, err := readMsg(c); err != io.EOF {
			t.Errorf("%s: read = %x, %v; want EOF", tc.name, msg, err)
		}
	}

	// A message cut short by the client's close: no crash, nothing sent.
	c := dialTCP(t, h.tcpAddr)
	c.Write([]byte{0, 100, 1, 2, 3})
	c.(*net.TCPConn).CloseWrite()
	if msg, err := readMsg(c); err != io.EOF {
		t.Errorf("cut message: read = %x, %v; want EOF", msg, err)
	}

	c = dialTCP(t, h.tcpAddr)
	if err := writeMsg(c, query(t, 4, "fine.test.")); err != nil {
		t.Fatal(err)
	}
	msg, err := readMsg(c)
	if err != nil {
		t.Fatalf("TCP query after malformed ones: %v", err)
	}
	wantReply(t, msg, 4, "fine.test.")
	if n := up.tcpQueries.Load(); n != 1 {
		t.Errorf("upstream got %d queries, want 1", n)
	}
}

func TestTCPIdleClientClosed(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	const idle = 200 * time.Millisecond
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr},
		func(f *Forwarder) { f.idleTimeout = idle })

	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"sends nothing", nil},
		{"sends half a length", []byte{0}},
		{"sends half a message", []byte{0, 30, 0xab, 0xcd}},
	} {
		c := dialTCP(t, h.tcpAddr)
		start := time.Now()
		c.Write(tc.send)
		buf := make([]byte, 1)
		if n, err := c.Read(buf); err != io.EOF {
			t.Errorf("client that %s: read = %d, %v; want EOF", tc.name, n, err)
		}
		// The server's timer starts at its Accept, a moment before Dial
		// returns here; only a close well before the timeout is wrong.
		if d := time.Since(start); d < idle/2 {
			t.Errorf("client that %s: closed after %v, well before the %v idle timeout", tc.name, d, idle)
		}
	}
	// After answering, the idle timer starts again.
	c := dialTCP(t, h.tcpAddr)
	writeMsg(c, query(t, 1, "idle.test."))
	if _, err := readMsg(c); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if msg, err := readMsg(c); err != io.EOF {
		t.Errorf("after a reply and silence: read = %x, %v; want EOF", msg, err)
	}
	eventually(t, "the upstream connection to be closed", func() bool { return up.tcpEOFs.Load() == 1 })
}

// Too many TCP clients: the surplus connections are closed at once.
func TestTCPConnLimit(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr},
		func(f *Forwarder) { f.tcpSem = make(chan struct{}, 1) })

	first := dialTCP(t, h.tcpAddr)
	writeMsg(first, query(t, 1, "first.test."))
	if _, err := readMsg(first); err != nil { // first is now being served
		t.Fatalf("first connection: %v", err)
	}
	second := dialTCP(t, h.tcpAddr)
	if msg, err := readMsg(second); err != io.EOF {
		t.Errorf("second connection: read = %x, %v; want EOF", msg, err)
	}
	if n := h.f.tcpRejected.Load(); n != 1 {
		t.Errorf("tcpRejected = %d, want 1", n)
	}
}

// Cancelling Serve's context closes pc, ln, client and upstream
// connections and in-flight queries, logs nothing, and leaves no goroutine.
func TestServeCancelClosesEverything(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	up.silent.Store(true)
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr, Timeout: time.Minute}, nil)

	// In flight: a UDP query, a TCP query, and an idle TCP client.
	uc, err := net.Dial("udp", h.udpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.Write(query(t, 1, "udp.test."))
	busy := dialTCP(t, h.tcpAddr)
	writeMsg(busy, query(t, 2, "tcp.test."))
	idle := dialTCP(t, h.tcpAddr)
	eventually(t, "both queries upstream", func() bool {
		return up.udpQueries.Load() == 1 && up.tcpQueries.Load() == 1
	})

	start := time.Now()
	h.cancel()
	if err := h.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Serve took %v to return", d)
	}
	// Serve waits for its goroutines: none may still run forwarder code.
	// An interrupt that has signalled its end may still be returning, so
	// allow a moment for that (not for real work: that would be a hang).
	gs := forwarderGoroutines()
	for deadline := time.Now().Add(time.Second); len(gs) > 0 && time.Now().Before(deadline); gs = forwarderGoroutines() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(gs) > 0 {
		t.Errorf("after Serve returned, %d goroutines still run forwarder code:\n%s", len(gs), strings.Join(gs, "\n\n"))
	}

	if _, _, err := h.pc.ReadFrom(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("pc.ReadFrom after Serve = %v, want net.ErrClosed", err)
	}
	if _, err := h.ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ln.Accept after Serve = %v, want net.ErrClosed", err)
	}
	for name, c := range map[string]net.Conn{"busy": busy, "idle": idle} {
		if msg, err := readMsg(c); err != io.EOF {
			t.Errorf("%s client after Serve: read = %x, %v; want EOF", name, msg, err)
		}
	}
	eventually(t, "the upstream TCP connection to be closed", func() bool { return up.tcpEOFs.Load() == 1 })
	if logs := h.logs.get(); len(logs) > 0 {
		t.Errorf("shutdown logged %q, want nothing", logs)
	}
}

func TestServeNilConns(t *testing.T) {
	checkGoroutineLeaks(t)
	f, err := New(Config{Upstream: netip.MustParseAddrPort("127.0.0.1:53")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx, nil, nil) }()
	select {
	case err := <-done:
		t.Fatalf("Serve(nil, nil) returned before cancel: %v", err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve(nil, nil) = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve(nil, nil) did not return after cancel")
	}
}

// If someone else closes pc, Serve stops, closes ln, and says why.
func TestServeFailsWhenConnClosedElsewhere(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr}, nil)

	h.pc.Close()
	if err := h.wait(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after pc.Close = %v, want an error wrapping net.ErrClosed", err)
	}
	if _, err := h.ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ln.Accept after Serve = %v, want net.ErrClosed", err)
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg     Config
		want    netip.AddrPort // zero: must fail
		timeout time.Duration
	}{
		{Config{Upstream: netip.MustParseAddrPort("127.0.0.53:53")}, netip.MustParseAddrPort("127.0.0.53:53"), DefaultTimeout},
		{Config{Upstream: netip.MustParseAddrPort("1.1.1.1:0")}, netip.MustParseAddrPort("1.1.1.1:53"), DefaultTimeout},
		{Config{Upstream: netip.MustParseAddrPort("[::1]:5353"), Timeout: time.Second}, netip.MustParseAddrPort("[::1]:5353"), time.Second},
		{Config{Upstream: netip.MustParseAddrPort("[::ffff:10.0.0.1]:53")}, netip.MustParseAddrPort("10.0.0.1:53"), DefaultTimeout},
		{Config{}, netip.AddrPort{}, 0},
		{Config{Upstream: netip.MustParseAddrPort("0.0.0.0:53")}, netip.AddrPort{}, 0},
		{Config{Upstream: netip.MustParseAddrPort("[ff02::1]:53")}, netip.AddrPort{}, 0},
		{Config{Upstream: netip.MustParseAddrPort("1.1.1.1:53"), Timeout: -1}, netip.AddrPort{}, 0},
	} {
		f, err := New(tc.cfg)
		if !tc.want.IsValid() {
			if err == nil {
				t.Errorf("New(%+v) = %v, nil; want an error", tc.cfg, f.Upstream())
			}
			continue
		}
		if err != nil || f.Upstream() != tc.want || f.timeout != tc.timeout {
			t.Errorf("New(%+v) = upstream %v timeout %v, %v; want %v, %v, nil", tc.cfg, f.Upstream(), f.timeout, err, tc.want, tc.timeout)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" means must fail
	}{
		{"1.1.1.1", "1.1.1.1:53"},
		{"1.1.1.1:5353", "1.1.1.1:5353"},
		{"127.0.0.53", "127.0.0.53:53"},
		{"::1", "[::1]:53"},
		{"[::1]", "[::1]:53"},
		{"[::1]:5353", "[::1]:5353"},
		{"2001:db8::1", "[2001:db8::1]:53"},
		{"::1:53", "[::1:53]:53"}, // an address, not ::1 port 53
		{"fe80::1%eth0", "[fe80::1%eth0]:53"},
		{"[fe80::1%eth0]:54", "[fe80::1%eth0]:54"},
		{"::ffff:1.2.3.4", "1.2.3.4:53"},
		{"[::ffff:1.2.3.4]:99", "1.2.3.4:99"},
		{"1.1.1.1:65535", "1.1.1.1:65535"},

		{"", ""},
		{"dns.example", ""},
		{"dns.example:53", ""},
		{"localhost", ""},
		{"1.1.1.1:", ""},
		{"1.1.1.1:0", ""},
		{"1.1.1.1:65536", ""},
		{"1.1.1.1:dns", ""},
		{"1.1.1.1:-1", ""},
		{"1.1.1", ""},
		{"01.1.1.1", ""},
		{" 1.1.1.1", ""},
		{"1.1.1.1 ", ""},
		{"[1.1.1.1]", ""},
		{"[1.1.1.1]:53", ""},
		{"[::1", ""},
		{"::1]", ""},
		{"[::1]:", ""},
		{"::1:", ""},
		{"0.0.0.0", ""},
		{"[::]:53", ""},
		{"224.0.0.251", ""},
		{"ff02::fb", ""},
		{"255.255.255.255", ""},
		{"1.1.1.1%eth0", ""},
	} {
		got, err := ParseUpstream(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseUpstream(%q) = %v, nil; want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s, nil", tc.in, got, err, tc.want)
		}
	}
}

func TestUpstreamFromResolvConf(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf string
		want string // "" means must fail
	}{
		{"one", "nameserver 192.0.2.53\n", "192.0.2.53:53"},
		{"first wins", "nameserver 192.0.2.1\nnameserver 192.0.2.2\n", "192.0.2.1:53"},
		{"no final newline", "nameserver 192.0.2.1", "192.0.2.1:53"},
		{"CRLF", "nameserver 192.0.2.1\r\n", "192.0.2.1:53"},
		{"systemd-resolved stub", "# This is /run/systemd/resolve/stub-resolv.conf\n" +
			"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", "127.0.0.53:53"},
		{"comments and options first", "# nameserver 192.0.2.9\n; nameserver 192.0.2.8\n" +
			"#nameserver 192.0.2.7\noptions ndots:5 timeout:1\nsearch example.com\n" +
			"domain example.com\nnameserver 192.0.2.1\n", "192.0.2.1:53"},
		{"tabs, spaces and trailing text", "  nameserver\t192.0.2.1   # primary\n", "192.0.2.1:53"},
		{"IPv6", "nameserver 2001:db8::53\n", "[2001:db8::53]:53"},
		{"IPv6 loopback", "nameserver ::1\nnameserver 192.0.2.1\n", "[::1]:53"},
		{"IPv6 with zone", "nameserver fe80::1%eth0\n", "[fe80::1%eth0]:53"},
		{"unusable ones skipped", "nameserver dns.example\nnameserver 0.0.0.0\n" +
			"nameserver\nnameserver 192.0.2.1#x\nnameserver 192.0.2.2\n", "192.0.2.2:53"},
		{"keyword is case-sensitive", "Nameserver 192.0.2.1\nnameserver 192.0.2.2\n", "192.0.2.2:53"},
		{"keyword must be a whole word", "nameservers 192.0.2.1\nnameserver 192.0.2.2\n", "192.0.2.2:53"},

		{"empty", "", ""},
		{"only comments", "# nameserver 192.0.2.1\n; nameserver 192.0.2.2\n", ""},
		{"only options", "options edns0\nsearch example.com\n", ""},
		{"only unusable", "nameserver dns.example\nnameserver ff02::1\n", ""},
		{"address without keyword", "192.0.2.1\n", ""},
		{"keyword without address", "nameserver\n", ""},
		{"port is not resolv.conf syntax", "nameserver 192.0.2.1:5353\n", ""},
	} {
		path := t.TempDir() + "/resolv.conf"
		if err := os.WriteFile(path, []byte(tc.conf), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := UpstreamFromResolvConf(path)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: UpstreamFromResolvConf(%q) = %v, nil; want an error", tc.name, tc.conf, got)
			} else {
				t.Logf("%s: %v", tc.name, err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: UpstreamFromResolvConf(%q) = %v, %v; want %s, nil", tc.name, tc.conf, got, err, tc.want)
		}
	}

	missing := t.TempDir() + "/missing"
	if got, err := UpstreamFromResolvConf(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("UpstreamFromResolvConf(%s) = %v, %v; want an error wrapping os.ErrNotExist", missing, got, err)
	}
}

func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{
		"1.1.1.1", "1.1.1.1:5353", "::1", "[::1]", "[::1]:53", "fe80::1%eth0",
		"[fe80::1%eth0]:54", "::ffff:1.2.3.4", "[1.1.1.1]:53", "0.0.0.0", "dns.example", "", "[",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseUpstream(s)
		if err != nil {
			return
		}
		if _, err := checkUpstream(ap); err != nil || ap.Addr().Is4In6() {
			t.Fatalf("ParseUpstream(%q) = %v, which is unusable (%v)", s, ap, err)
		}
		again, err := ParseUpstream(ap.String())
		if err != nil || again != ap {
			t.Fatalf("ParseUpstream(%q) = %v, but ParseUpstream(%q) = %v, %v", s, ap, ap.String(), again, err)
		}
	})
}

func FuzzParseResolvConf(f *testing.F) {
	for _, s := range []string{
		"nameserver 192.0.2.1\n",
		"# c\n; c\noptions edns0\nsearch a b\nnameserver 127.0.0.53\n",
		"nameserver fe80::1%eth0\nnameserver ::1\n",
		"nameserver x\nnameserver 0.0.0.0\nnameserver\n",
		"\r\n\t nameserver\t::1 junk",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, conf string) {
		ap, err := parseResolvConf(conf)
		if err != nil {
			return
		}
		if _, err := checkUpstream(ap); err != nil || ap.Port() != 53 {
			t.Fatalf("parseResolvConf(%q) = %v, which is unusable (%v)", conf, ap, err)
		}
	})
}

// readMsg and writeMsg are inverses on whatever readMsg accepts.
func FuzzReadMsg(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{0, 0})
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 1, 'd'})
	f.Add([]byte{0xff, 0xff, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var out bytes.Buffer
		for {
			msg, err := readMsg(r)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("readMsg: unexpected error %v", err)
				}
				if err == io.EOF && r.Len() != 0 {
					t.Fatalf("readMsg: EOF with %d bytes left", r.Len())
				}
				break
			}
			if err := writeMsg(&out, msg); err != nil {
				t.Fatalf("writeMsg(%d bytes): %v", len(msg), err)
			}
		}
		if consumed := data[:out.Len()]; !bytes.Equal(out.Bytes(), consumed) {
			t.Fatalf("re-framed messages %x differ from the input %x", out.Bytes(), consumed)
		}
	})
}

func TestHeaderChecks(t *testing.T) {
	q := []byte{0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	r := slices.Clone(q)
	r[2] |= 0x80
	other := slices.Clone(r)
	other[1] = 0x35
	for _, tc := range []struct {
		name          string
		msg           []byte
		query, answer bool // isQuery(msg), isReplyTo(msg, q)
	}{
		{"query", q, true, false},
		{"its reply", r, false, true},
		{"another ID's reply", other, false, false},
		{"short query", q[:11], false, false},
		{"short reply", r[:11], false, false},
		{"empty", nil, false, false},
	} {
		if got := isQuery(tc.msg); got != tc.query {
			t.Errorf("isQuery(%s %x) = %v, want %v", tc.name, tc.msg, got, tc.query)
		}
		if got := isReplyTo(tc.msg, q); got != tc.answer {
			t.Errorf("isReplyTo(%s %x, query) = %v, want %v", tc.name, tc.msg, got, tc.answer)
		}
	}
}
