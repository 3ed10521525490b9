package stack

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// TestTCPRelayLeavesHandler: once a flow is relayed, the goroutine gVisor
// started for its SYN has returned (its stack grew in the dial and the
// handshake); the relay runs on goroutines of its own, only while bytes
// flow: idle flows have none.
func TestTCPRelayLeavesHandler(t *testing.T) {
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		c.Write([]byte("hello\n"))
		io.Copy(io.Discard, c)
	})
	e := startEnv(t, testConfig(t))
	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))
	for i := range 3 {
		c, err := guestDial(t, e.guest, dst)
		if err != nil {
			t.Fatalf("guest dial %d: %v", i, err)
		}
		defer c.Close()
		b := make([]byte, 6)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("read greeting %d: %v", i, err)
		}
	}
	var stacks string
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		busy := strings.Contains(stacks, "stack.(*Stack).handleTCP(") || strings.Contains(stacks, "relay.(*half).run(")
		if !busy || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(stacks, "stack.(*Stack).handleTCP(") {
		t.Errorf("a handler goroutine is still running with idle flows:\n%s", stacks)
	}
	if n := strings.Count(stacks, "relay.(*half).run("); n != 0 {
		t.Errorf("%d relay directions running for 3 idle flows, want 0:\n%s", n, stacks)
	}
}

// TestGrowStack: growStack leaves its goroutine with a stack of 16 KiB
// (the compiler kept its array), so that gVisor's send path does not
// grow it again and again.
func TestGrowStack(t *testing.T) {
	const n = 200
	park := make(chan struct{})
	ready := make(chan struct{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		go func() {
			growStack()
			ready <- struct{}{}
			<-park
		}()
	}
	for range n {
		<-ready
	}
	runtime.ReadMemStats(&after)
	close(park)
	// 16 KiB each, less a little (other goroutines' stacks came and went).
	if per := (int64(after.StackInuse) - int64(before.StackInuse)) / n; per < 12<<10 {
		t.Errorf("a goroutine after growStack holds %d bytes of stack, want about 16 KiB", per)
	}
}

// TestTCPIdleFlowsHaveNoGoroutines: idle relayed flows hold no goroutine
// (the relay waits through gVisor's waiter queue and the Stack's epoll),
// and data, a half-close and a reset that come after a while idle still
// pass, both ways. It logs what an idle flow costs (both gVisor endpoints
// of the test included).
func TestTCPIdleFlowsHaveNoGoroutines(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 100
	}
	// The host's side: one goroutine accepts and greets, then keeps
	// every conn.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hosts := make(chan *net.TCPConn, n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			hosts <- c.(*net.TCPConn)
		}
	}()
	e := startEnv(t, testConfig(t))
	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()
	guests := make([]*gonet.TCPConn, n)
	hostConns := make([]*net.TCPConn, n)
	for i := range n {
		c, err := guestDial(t, e.guest, dst)
		if err != nil {
			t.Fatalf("guest dial %d: %v", i, err)
		}
		defer c.Close()
		guests[i] = c
		hostConns[i] = <-hosts
		defer hostConns[i].Close()
		b := make([]byte, 6)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("read greeting %d: %v", i, err)
		}
	}
	var grown int
	for deadline := time.Now().Add(10 * time.Second); ; {
		grown = runtime.NumGoroutine() - goroutinesBefore
		if grown < n/10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	kib := func(a, b uint64) float64 { return (float64(a) - float64(b)) / 1024 / float64(n) }
	t.Logf("per idle flow: %.1f goroutines, %.1f KiB of stack, %.1f KiB of heap (both gVisor endpoints, both host sockets)",
		float64(grown)/float64(n), kib(after.StackInuse, before.StackInuse), kib(after.HeapInuse, before.HeapInuse))
	if grown >= n/10 {
		t.Fatalf("%d idle flows: %d more goroutines, want almost none", n, grown)
	}

	time.Sleep(100 * time.Millisecond)
	for i, g := range guests {
		h := hostConns[i]
		g.SetDeadline(time.Now().Add(10 * time.Second))
		h.SetDeadline(time.Now().Add(10 * time.Second))
		relayed(t, i, g, h)
		relayed(t, i, h, g)
		switch i % 3 {
		case 0: // half-closes both ways
			g.CloseWrite()
			if n, err := h.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("flow %d: host after the guest's half-close: %d, %v; want EOF", i, n, err)
			}
			h.CloseWrite()
			if n, err := g.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("flow %d: guest after the host's half-close: %d, %v; want EOF", i, n, err)
			}
		case 1: // the host resets
			h.SetLinger(0)
			h.Close()
			if _, err := io.ReadAll(g); err == nil {
				t.Fatalf("flow %d: guest after the host's reset: EOF, want an error", i)
			}
		case 2: // the guest resets: it closes with unread data
			if _, err := h.Write([]byte("unread")); err != nil {
				t.Fatalf("flow %d: write: %v", i, err)
			}
			if _, err := io.ReadFull(g, make([]byte, 1)); err != nil {
				t.Fatalf("flow %d: guest read: %v", i, err)
			}
			g.Close()
			if _, err := io.ReadAll(h); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("flow %d: host after the guest's reset: %v, want ECONNRESET", i, err)
			}
		}
	}
}

// relayed writes a few bytes to from and reads them at to.
func relayed(t *testing.T, i int, from, to net.Conn) {
	t.Helper()
	if _, err := from.Write([]byte("ping")); err != nil {
		t.Fatalf("flow %d: write: %v", i, err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(to, b); err != nil || string(b) != "ping" {
		t.Fatalf("flow %d: read %q, %v; want ping", i, b, err)
	}
}
