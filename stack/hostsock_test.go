package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestDialHostSharesEphemeralPorts: host sockets must leave the choice of the local port to
// connect(2), which lets connections to different destinations share a port. A socket bound
// to port 0 first takes a port of its own, and the host runs out after ~28k connections
// (TIME_WAIT included) whatever their destinations. In a network namespace of its own with
// a two-port ephemeral range, three connections to three servers must all succeed: to
// loopback (no local address) and from an --outbound-addr (bound address, no port), also
// to loopback.
func TestDialHostSharesEphemeralPorts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own with a two-port ephemeral range")
	}
	for _, tc := range []struct {
		name     string
		serverIP string
		outbound netip.Addr
		addToLo  string
	}{
		{"loopback", "127.0.0.1", netip.Addr{}, ""},
		{"outbound-addr", "192.0.2.10", netip.MustParseAddr("192.0.2.1"), "192.0.2.0/24"},
		// The gateway's mapping to the host's loopback is bound too (slirp4netns).
		{"outbound-addr-to-loopback", "127.0.0.1", netip.MustParseAddr("192.0.2.1"), "192.0.2.1/32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errc := make(chan error, 1)
			go func() {
				// This thread enters a new network namespace and is never
				// unlocked: it exits with the goroutine.
				runtime.LockOSThread()
				errc <- func() error {
					if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
						return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
					}
					lo, err := netlink.LinkByName("lo")
					if err != nil {
						return err
					}
					if err := netlink.LinkSetUp(lo); err != nil {
						return fmt.Errorf("lo up: %w", err)
					}
					if tc.addToLo != "" {
						a, err := netlink.ParseAddr(tc.addToLo)
						if err != nil {
							return err
						}
						if err := netlink.AddrAdd(lo, a); err != nil {
							return fmt.Errorf("address %s on lo: %w", tc.addToLo, err)
						}
					}
					// /proc/sys/net follows the opening thread's namespace.
					if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40001"), 0); err != nil {
						return fmt.Errorf("ip_local_port_range: %w", err)
					}
					s := &Stack{cfg: Config{DialTimeout: 5 * time.Second, OutboundAddr: tc.outbound}}
					for i := range 3 {
						// Servers outside the ephemeral range.
						ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", tc.serverIP, 50001+i))
						if err != nil {
							return err
						}
						defer ln.Close()
						dst := netip.MustParseAddrPort(ln.Addr().String())
						c, err := s.dialHost(context.Background(), "tcp", dst)
						if err != nil {
							return fmt.Errorf("connection %d of 3 (to %v), with 2 ephemeral ports: %w", i+1, dst, err)
						}
						defer c.Close()
						if got := netip.MustParseAddrPort(c.LocalAddr().String()); tc.outbound.IsValid() && got.Addr() != tc.outbound {
							return fmt.Errorf("connection %d from %v, want from the outbound address %v", i+1, got, tc.outbound)
						}
					}
					return nil
				}()
			}()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}
