package stack

import (
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestTCPRelayLeavesHandler: once a flow is relayed, the goroutine gVisor
// started for its SYN has returned (its stack grew in the dial and the
// handshake); the relay runs on goroutines of its own.
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
		if !strings.Contains(stacks, "stack.(*Stack).handleTCP(") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(stacks, "stack.(*Stack).handleTCP(") {
		t.Errorf("a handler goroutine is still running with idle flows:\n%s", stacks)
	}
	if n := strings.Count(stacks, "relay.copyHalf("); n < 6 {
		t.Errorf("%d relay directions running, want 6 (3 flows):\n%s", n, stacks)
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
