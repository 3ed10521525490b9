package loopfwd

import (
	"context"
	"io"
	"net"
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
	done := make(chan struct{})
	go func() {
		Run(ctx, []Forward{{Listener: ns, HostPort: uint16(host.Addr().(*net.TCPAddr).Port)}}, t.Logf)
		close(done)
	}()
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
		t.Fatal("Run did not return after ctx ended")
	}
	if _, err := net.DialTimeout("tcp", ns.Addr().String(), time.Second); err == nil {
		t.Error("the namespace listener still accepts after Run returned")
	}
}
