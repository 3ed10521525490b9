package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Black-holed destinations for the limit tests: the host's dial to one of
// them never finishes (until its context ends). Everything else reaches
// the loopback echo server good.
var blackHoles = netip.MustParsePrefix("198.51.100.0/24")

type limitEnv struct {
	*env
	good netip.AddrPort // a destination that answers
}

func startLimitEnv(t *testing.T, lim Limits) *limitEnv {
	t.Helper()
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	server := netip.MustParseAddrPort(ln.Addr().String())
	d := &redirect{to: func(ctx context.Context, _ string, dst netip.AddrPort) (netip.AddrPort, error) {
		if blackHoles.Contains(dst.Addr()) {
			<-ctx.Done()
			return netip.AddrPort{}, ctx.Err()
		}
		return server, nil
	}}
	cfg := testConfig(t)
	cfg.host = d
	cfg.Limits = lim
	return &limitEnv{env: startEnv(t, cfg), good: netip.MustParseAddrPort("203.0.113.7:80")}
}

// dialAsync starts a guest connect to dst; its result arrives on the
// channel. Cleanup ends it.
func (e *limitEnv) dialAsync(t *testing.T, dst netip.AddrPort) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan error, 1)
	go func() {
		c, err := gonet.DialContextTCP(ctx, e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()}, protoOf(dst.Addr()))
		if c != nil {
			c.Close()
		}
		ch <- err
	}()
	return ch
}

// waitCounts waits until the table holds want half-open attempts.
func (e *limitEnv) waitHalfOpen(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, h, _ := e.s.tcp.counts()
		if h == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("half-open attempts: %d, want %d", h, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoOnce checks that a fresh guest connection to dst works, promptly.
func (e *limitEnv) echoOnce(t *testing.T, dst netip.AddrPort) {
	t.Helper()
	start := time.Now()
	c, err := guestDial(t, e.guest, dst)
	if err != nil {
		t.Fatalf("guest connect to %v: %v", dst, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("write to %v: %v", dst, err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo from %v: %q, %v", dst, b, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("connect and echo to %v took %v", dst, d)
	}
}

func refusedWithin(t *testing.T, what string, ch <-chan error, d time.Duration) {
	t.Helper()
	select {
	case err := <-ch:
		if err == nil || !strings.Contains(err.Error(), "connection was refused") {
			t.Errorf("%s: %v, want a RST (connection was refused)", what, err)
		}
	case <-time.After(d):
		t.Errorf("%s: no answer within %v, want a RST", what, d)
	}
}

func (e *limitEnv) refusals(r Refusal) uint64 { return e.s.refused[r].Load() }

// TestTCPDestLimit: dials in progress to one destination (address and
// port) are bounded; a SYN
// beyond is reset at once and counted, and other destinations still work.
func TestTCPDestLimit(t *testing.T) {
	e := startLimitEnv(t, Limits{TCPMaxDialsPerDest: 4})
	hole := netip.MustParseAddrPort("198.51.100.1:80")
	for range 4 {
		e.dialAsync(t, hole)
	}
	e.waitHalfOpen(t, 4)
	refusedWithin(t, "fifth connect to a black hole", e.dialAsync(t, hole), 2*time.Second)
	if n := e.refusals(TCPDestLimit); n != 1 {
		t.Errorf("refusals %v: %d, want 1", TCPDestLimit, n)
	}
	e.echoOnce(t, e.good)
	// Another port of the same address is another destination (every
	// host service is behind the gateway's one address).
	e.dialAsync(t, netip.MustParseAddrPort("198.51.100.1:443"))
	e.waitHalfOpen(t, 5)
	if n := e.refusals(TCPDestLimit); n != 1 {
		t.Errorf("refusals %v after a connect to another port: %d, want 1", TCPDestLimit, n)
	}
}

// TestTCPHalfOpenEvictsOldest: at the half-open limit a new SYN takes the
// oldest attempt's slot; the oldest guest connect is reset.
func TestTCPHalfOpenEvictsOldest(t *testing.T) {
	for _, tc := range []struct {
		name string
		lim  Limits
		why  Refusal
	}{
		{"global", Limits{TCPMaxHalfOpen: 4}, TCPHalfOpenEvicted},
		{"per-source", Limits{TCPMaxHalfOpenPerSource: 4}, TCPSourceEvicted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startLimitEnv(t, tc.lim)
			var chs []<-chan error
			for i := range 4 {
				chs = append(chs, e.dialAsync(t, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}), 80)))
				e.waitHalfOpen(t, i+1) // in order: the first is the oldest
			}
			e.echoOnce(t, e.good)
			refusedWithin(t, "the oldest black-holed connect", chs[0], 2*time.Second)
			if n := e.refusals(tc.why); n != 1 {
				t.Errorf("refusals %v: %d, want 1", tc.why, n)
			}
			for i, ch := range chs[1:] {
				select {
				case err := <-ch:
					t.Errorf("black-holed connect %d ended (%v); only the oldest should be", i+1, err)
				default:
				}
			}
			e.waitHalfOpen(t, 3)
		})
	}
}

// TestTCPConnLimit: connections beyond TCPMaxConns are reset; closing one
// makes room.
func TestTCPConnLimit(t *testing.T) {
	e := startLimitEnv(t, Limits{TCPMaxConns: 3})
	var conns []*gonet.TCPConn
	for range 3 {
		c, err := guestDial(t, e.guest, e.good)
		if err != nil {
			t.Fatalf("guest connect: %v", err)
		}
		conns = append(conns, c)
	}
	if _, err := guestDial(t, e.guest, e.good); err == nil || !strings.Contains(err.Error(), "connection was refused") {
		t.Errorf("fourth connection: %v, want refused", err)
	}
	if n := e.refusals(TCPConnLimit); n != 1 {
		t.Errorf("refusals %v: %d, want 1", TCPConnLimit, n)
	}
	for i, c := range conns { // the established ones are not touched
		b := []byte("hi")
		if _, err := c.Write(b); err != nil {
			t.Fatalf("connection %d after the refusal: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "hi" {
			t.Fatalf("connection %d after the refusal: read %q, %v", i, b, err)
		}
	}
	conns[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n, _, _ := e.s.tcp.counts(); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection was not given back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.echoOnce(t, e.good)
	for _, c := range conns[1:] {
		c.Close()
	}
}

// TestTCPHandshakeTimeout: when the guest never completes its handshake
// (its SYN-ACKs are lost), the host socket is closed after
// TCPHandshakeTimeout, and the slot is given back.
func TestTCPHandshakeTimeout(t *testing.T) {
	var accepted, closed atomic.Int32
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		accepted.Add(1)
		io.Copy(io.Discard, c)
		closed.Add(1)
	})
	server := netip.MustParseAddrPort(ln.Addr().String())
	cfg := testConfig(t)
	cfg.host = &redirect{to: func(context.Context, string, netip.AddrPort) (netip.AddrPort, error) { return server, nil }}
	cfg.Limits = Limits{TCPHandshakeTimeout: 300 * time.Millisecond}
	e := &limitEnv{env: startEnv(t, cfg)}
	lost := netip.MustParseAddrPort("203.0.113.9:80")
	e.sniff.drop(func(p []byte) bool { return isSYNACKFrom(p, lost) })

	start := time.Now()
	e.dialAsync(t, lost)
	deadline := time.Now().Add(5 * time.Second)
	for accepted.Load() == 0 || closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("host server: %d accepted, %d closed; want the host socket closed", accepted.Load(), closed.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("host socket closed after %v, want about the 300ms handshake timeout", d)
	}
	if n := e.refusals(TCPHandshakeTimeout); n != 1 {
		t.Errorf("refusals %v: %d, want 1", TCPHandshakeTimeout, n)
	}
	e.waitHalfOpen(t, 0)
	if n, _, _ := e.s.tcp.counts(); n != 0 {
		t.Errorf("connections after the timeout: %d, want 0", n)
	}
	e.sniff.drop(nil)
	e.good = netip.MustParseAddrPort("203.0.113.10:80")
	c, err := guestDial(t, e.guest, e.good)
	if err != nil {
		t.Fatalf("a good connection after the timeout: %v", err)
	}
	c.Close()
}

// isSYNACKFrom reports whether p (an IPv4 packet) is a SYN-ACK from src.
func isSYNACKFrom(p []byte, src netip.AddrPort) bool {
	ip := header.IPv4(p)
	if len(p) < header.IPv4MinimumSize || !ip.IsValid(len(p)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return false
	}
	if addrFrom(ip.SourceAddress()) != src.Addr() {
		return false
	}
	tcp := header.TCP(ip.Payload())
	if len(tcp) < header.TCPMinimumSize {
		return false
	}
	return tcp.SourcePort() == src.Port() && tcp.Flags().Contains(header.TCPFlagSyn|header.TCPFlagAck)
}

// TestTCPAttemptDropsContextOnceEstablished: an established connection's
// attempt no longer holds its context (nor the stack's context a record
// of it), which an idle flow would keep for as long as it lasts; its
// connection is still counted until done.
func TestTCPAttemptDropsContextOnceEstablished(t *testing.T) {
	var refused refusals
	tab := newTCPTable(Limits{}, &refused)
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	dst := netip.MustParseAddrPort("10.0.2.2:80")
	a, ok := tab.admit(parent, netip.MustParseAddr("10.0.2.100"), dst)
	if !ok {
		t.Fatal("admit refused the first attempt")
	}
	dctx, dcancel := context.WithTimeout(a.ctx, time.Second)
	dcancel()
	<-dctx.Done()
	tab.dialed(a)
	tab.established(a)
	if a.ctx != nil || a.cancel != nil {
		t.Errorf("an established attempt still holds its context")
	}
	if conns, halfOpen, dials := tab.counts(); conns != 1 || halfOpen != 0 || dials != 0 {
		t.Errorf("established: %d conns, %d half-open, %d dials; want 1, 0, 0", conns, halfOpen, dials)
	}
	tab.done(a)
	if conns, _, _ := tab.counts(); conns != 0 {
		t.Errorf("done: %d conns, want 0", conns)
	}
}
