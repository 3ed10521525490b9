package stack

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDialTCPWaitsForHandshake: a host connect that does not complete at
// once (the listener's accept queue is full, so it drops the SYNs until
// one is accepted) is waited for: it ends at the context's deadline or
// cancellation with the context's error, and succeeds once the listener
// makes room (the SYN's retransmission, a second later), with a socket
// that carries bytes both ways.
func TestDialTCPWaitsForHandshake(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0: one connection fills the accept queue.
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))

	first, err := dialTCP(context.Background(), dst, netip.Addr{})
	if err != nil {
		t.Fatalf("first dial: %v", err)
	}
	defer first.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if c, err := dialTCP(ctx, dst, netip.Addr{}); !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial to a full accept queue with a 200ms deadline: %v, want the deadline's error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the dial's deadline ended it after %v", d)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if c, err := dialTCP(ctx, dst, netip.Addr{}); !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial to a full accept queue, cancelled: %v, want context.Canceled", err)
	}

	// Make room once the dial is waiting.
	accepted := make(chan int, 2)
	time.AfterFunc(200*time.Millisecond, func() {
		for range 2 {
			nfd, _, err := unix.Accept(fd)
			if err != nil {
				close(accepted)
				return
			}
			accepted <- nfd
		}
	})
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialTCP(ctx, dst, netip.Addr{})
	if err != nil {
		t.Fatalf("dial that waits for room: %v", err)
	}
	defer c.Close()
	var peers []int
	for range 2 {
		nfd, ok := <-accepted
		if !ok {
			t.Fatalf("accepted %d connections, want 2", len(peers))
		}
		peers = append(peers, nfd)
		defer unix.Close(nfd)
	}
	// The second accepted is the waiting dial's.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("write: %v", err)
	}
	b := make([]byte, 1)
	if n, err := unix.Read(peers[1], b); n != 1 || err != nil || b[0] != 'x' {
		t.Fatalf("peer read %d %q, %v", n, b[:n], err)
	}
	if _, err := unix.Write(peers[1], []byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'y' {
		t.Fatalf("read %q, %v", b, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if n, err := unix.Read(peers[1], b); n != 0 || err != nil {
		t.Fatalf("peer read after CloseWrite: %d, %v; want EOF", n, err)
	}
}
