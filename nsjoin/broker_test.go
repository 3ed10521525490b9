package nsjoin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A network namespace of our own (root only), held by a sleeping child.
func netnsTarget(t *testing.T) Target {
	return holdNamespace(t, "unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 60")
}

// holdNamespace runs argv (unshare, a shell that says "up" and sleeps) and
// returns it as the target once it is up; it is killed when t ends.
func holdNamespace(t *testing.T, argv ...string) Target {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("unshare: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	buf := make([]byte, 3)
	if _, err := io.ReadFull(out, buf); err != nil || !strings.HasPrefix(string(buf), "up") {
		t.Fatalf("namespace holder: %v %q", err, buf)
	}
	return Target{PID: cmd.Process.Pid}
}

// The broker's sockets live in the target's namespace: a listener made
// there is not reachable from ours, and a connection made there reaches
// it and comes from the namespace's loopback.
func TestBrokerMakesSocketsInTheNamespace(t *testing.T) {
	tg := netnsTarget(t)
	b, err := StartBroker(tg)
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	defer b.Close()

	ln, err := b.ListenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// Our own loopback has no such listener (the port could be taken by
	// chance; then this check says nothing, which is fine).
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
		c.Close()
		t.Logf("port %d is also open in the test's namespace; not conclusive", port)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := b.DialTCP(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)))
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	defer c.Close()
	s := <-accepted
	defer s.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}

	// A closed port is refused, not hung.
	_, err = b.DialTCP(ctx, netip.MustParseAddrPort("127.0.0.1:1"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("DialTCP to a closed port in the namespace = %v, want ECONNREFUSED", err)
	}
}

func TestBrokerForAGoneTarget(t *testing.T) {
	if _, err := StartBroker(Target{PID: 999999999}); err == nil {
		t.Fatal("StartBroker for a PID that does not exist succeeded")
	}
}

// UDP: a socket bound in the namespace and one connected to it there
// exchange datagrams; the sender's address is the namespace's loopback.
func TestBrokerUDP(t *testing.T) {
	tg := netnsTarget(t)
	b, err := StartBroker(tg)
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	defer b.Close()
	srv, err := b.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	defer srv.Close()
	c, err := b.DialUDP(srv.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 10)
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "ping" || !from.Addr().IsLoopback() {
		t.Fatalf("read %q from %v, %v; want ping from the namespace's loopback", buf[:n], from, err)
	}
}

// Many connections at once, IPv4 and IPv6, more than one batch of fresh
// sockets each: every one reaches the listener inside the namespace, and
// Close leaves no socket of the pool open.
func TestBrokerDialsManyAtOnce(t *testing.T) {
	tg := netnsTarget(t)
	fdsBefore := openFDs(t)
	b, err := StartBroker(tg)
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	const n = 3*freshBatch + 1
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := b.ListenTCP(netip.MustParseAddrPort(addr))
		if err != nil {
			t.Fatalf("ListenTCP %s: %v", addr, err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte{1})
				c.Close()
			}
		}()
		dst := ln.Addr().(*net.TCPAddr).AddrPort()
		errs := make(chan error, n)
		for range n {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := b.DialTCP(ctx, dst)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				var one [1]byte
				_, err = io.ReadFull(c, one[:])
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Errorf("dial %v: %v", dst, err)
			}
		}
		ln.Close()
	}
	b.Close()
	time.Sleep(100 * time.Millisecond) // the accept loops see their listeners closed
	if after := openFDs(t); after > fdsBefore {
		t.Errorf("%d fds open after Close, %d before StartBroker", after, fdsBefore)
	}
}
