package stack

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

// TestTCPHostUnreachable: when the host cannot reach the destination (its connect fails
// with EHOSTUNREACH or ENETUNREACH), the guest's connect fails the same way, through the
// ICMP error a router would send; a refused connection is still a RST.
func TestTCPHostUnreachable(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		want  string // in the guest's connect error
	}{
		{syscall.EHOSTUNREACH, "no route to host"},
		{syscall.ENETUNREACH, "network is unreachable"},
		{syscall.ECONNREFUSED, "connection was refused"},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			d := &redirect{to: func(_ context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
				return netip.AddrPort{}, fmt.Errorf("connect: %w", tc.errno)
			}}
			cfg := testConfig(t)
			cfg.host = d
			e := startEnv(t, cfg)
			_, err := guestDial(t, e.guest, netip.MustParseAddrPort("203.0.113.5:80"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("guest connect to 203.0.113.5:80 with the host's dial failing with %v: %v; want %q", tc.errno, err, tc.want)
			}
		})
	}
}
