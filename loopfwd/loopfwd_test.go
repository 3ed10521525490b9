package loopfwd

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Over loopback alone: the "namespace" listener is one of ours, the host
// server another; a connection to the first reaches the second.
func TestRunRelaysToHostLoopback(t *testing.T) {
	host, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	go func() {
		c, err := host.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	ns, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	Serve(ctx, &wg, Forward{Listener: ns, HostPort: uint16(host.Addr().(*net.TCPAddr).Port)}, t.Logf)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	c, err := net.DialTimeout("tcp", ns.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "ping" {
		t.Errorf("echo through the forward = %q, %v", b, err)
	}
	c.Close()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve's goroutines did not end with ctx")
	}
	// A connect to a port nobody listens on can still succeed: when the
	// kernel picks that very port as the source (a self-connect).
	if c, err := net.DialTimeout("tcp", ns.Addr().String(), time.Second); err == nil {
		self := c.LocalAddr().String() == c.RemoteAddr().String()
		c.Close()
		if !self {
			t.Error("the namespace listener still accepts after ctx ended")
		}
	}
}

// A UDP forward over loopback alone: the "namespace" socket is one of
// ours, the host's echo server another; each source gets its replies.
func TestServeUDPRelaysBothWays(t *testing.T) {
	host, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := host.ReadFromUDP(buf)
			if err != nil {
				return
			}
			host.WriteToUDP(append([]byte("re: "), buf[:n]...), from)
		}
	}()
	ns, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ServeUDP(ctx, &wg, UDPForward{Conn: ns, HostPort: uint16(host.LocalAddr().(*net.UDPAddr).Port)}, t.Logf)
	for _, msg := range []string{"one", "two"} {
		c, err := net.DialUDP("udp4", nil, ns.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "re: "+msg {
			t.Errorf("reply to %q through the forward = %q, %v", msg, buf[:n], err)
		}
		c.Close()
	}
	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeUDP's goroutines did not end with ctx")
	}
}
