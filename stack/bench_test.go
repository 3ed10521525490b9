package stack

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

// Throughput baselines over the in-memory pipe (MTU 1500, no GSO): they
// measure the netstack and proxy cost, not a tap. Compare with
// `go test -bench . -benchtime 256MB -run '^$' ./stack/`.

func BenchmarkTCPGuestToHost(b *testing.B) {
	benchGuestToHost(b, func() *env { return startEnv(b, testConfig(b)) })
}

func BenchmarkTCPHostToGuest(b *testing.B) {
	benchHostToGuest(b, func() *env { return startEnv(b, testConfig(b)) })
}

// benchGuestToHost measures bulk TCP from the guest to a host sink
// through the gateway, 64 KiB per write, on the env that start builds
// (after the sink is listening).
func benchGuestToHost(b *testing.B, start func() *env) {
	ln := listenTCP(b, "tcp4", "127.0.0.1:0", func(c net.Conn) { io.Copy(io.Discard, c) })
	e := start()
	c, err := guestDial(b, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		b.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("guest write: %v", err)
		}
	}
}

// benchHostToGuest is benchGuestToHost the other way: a host source
// writes, the guest reads.
func benchHostToGuest(b *testing.B, start func() *env) {
	src := make([]byte, 64<<10)
	ln := listenTCP(b, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		for {
			if _, err := c.Write(src); err != nil {
				return
			}
		}
	})
	e := start()
	c, err := guestDial(b, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		b.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("guest read: %v", err)
		}
	}
}

func BenchmarkTCPConnect(b *testing.B) {
	ln := listenTCP(b, "tcp4", "127.0.0.1:0", func(c net.Conn) {})
	e := startEnv(b, testConfig(b))
	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))
	b.ResetTimer()
	for i := range b.N {
		c, err := guestDial(b, e.guest, dst)
		if err != nil {
			b.Fatalf("guest dial #%d: %v", i, err)
		}
		c.Close()
	}
}
