package stack

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pureAcks counts the segments from port to the guest that carry nothing
// but an ACK, from the sniffer's records.
func pureAcks(s *sniffer, port uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.pkts {
		if len(p) < header.IPv4MinimumSize || header.IPVersion(p) != header.IPv4Version {
			continue
		}
		ip := header.IPv4(p)
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			continue
		}
		tcp := header.TCP(ip.Payload())
		if tcp.SourcePort() == port && tcp.Flags() == header.TCPFlagAck && len(tcp.Payload()) == 0 {
			n++
		}
	}
	return n
}

// TestDelayedAck (carried gVisor patch 0003): a request answered within
// the delay gets its ACK on the answer, not in a segment of its own, and
// so does the guest's FIN answered by ours; without the delay every
// request costs the guest a pure ACK.
func TestDelayedAck(t *testing.T) {
	const rounds = 20
	for _, tc := range []struct {
		name     string
		delay    time.Duration
		min, max int
	}{
		// The delay is long enough for any answer on a loaded machine;
		// production's is short.
		{"delayed", 300 * time.Millisecond, 0, 1},
		{"at once", -1, rounds, 2 * rounds},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			})
			cfg := testConfig(t)
			cfg.AckDelay = tc.delay
			e := startEnv(t, cfg)
			port := portOf(ln.Addr())
			c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, port))
			if err != nil {
				t.Fatalf("guest dial: %v", err)
			}
			b := make([]byte, 1)
			for i := range rounds {
				if _, err := c.Write([]byte{byte(i)}); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
					t.Fatalf("read %d: %v (%d)", i, err, b[0])
				}
			}
			c.Close()
			if n := pureAcks(e.sniff, port); n < tc.min || n > tc.max {
				t.Errorf("%d pure ACKs reached the guest for %d requests and a FIN, want %d to %d", n, rounds, tc.min, tc.max)
			}
		})
	}
}

// TestDelayedAckTimer: a request nobody answers is acknowledged when the
// delay runs out, not later, and not at once.
func TestDelayedAckTimer(t *testing.T) {
	const delay = 100 * time.Millisecond
	got := make(chan struct{})
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		b := make([]byte, 1)
		c.Read(b)
		close(got)
		io.Copy(io.Discard, c) // never answers
	})
	cfg := testConfig(t)
	cfg.AckDelay = delay
	e := startEnv(t, cfg)
	port := portOf(ln.Addr())
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, port))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	<-got
	deadline := time.Now().Add(5 * time.Second)
	for pureAcks(e.sniff, port) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request was never acknowledged")
		}
		time.Sleep(time.Millisecond)
	}
	if d := time.Since(start); d < delay*9/10 {
		t.Errorf("the request was acknowledged after %v, before the delay of %v", d, delay)
	}
}
