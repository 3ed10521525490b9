package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestTCPTimeWaitReuse: when the host closed first, the stack's side of
// the connection sits in TIME_WAIT; a new SYN from the guest for the same
// 4-tuple with a higher sequence number must open a new connection at
// once, as Linux does (RFC 1122 4.2.2.13), not wait out TIME_WAIT. Needs
// third_party/gvisor-patches/0002-*.
func TestTCPTimeWaitReuse(t *testing.T) {
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		c.Write([]byte("bye"))
		c.Close()
	})
	server := netip.MustParseAddrPort(ln.Addr().String())
	cfg := testConfig(t)
	cfg.host = &redirect{to: func(context.Context, string, netip.AddrPort) (netip.AddrPort, error) { return server, nil }}
	e := startEnv(t, cfg)
	dst := netip.MustParseAddrPort("203.0.113.7:80")
	remote := tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()}

	const port = 40000
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		var c *gonet.TCPConn
		var err error
		for { // the guest's own port may still be closing
			c, err = gonet.DialTCPWithBind(ctx, e.guest, tcpip.FullAddress{NIC: 1, Port: port}, remote, ipv4.ProtocolNumber)
			if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), (&tcpip.ErrPortInUse{}).String()) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err != nil {
			t.Fatalf("connection %d from port %d: %v", i, port, err)
		}
		took := time.Since(start)
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(b) != "bye" {
			t.Fatalf("connection %d: read %q, %v", i, b, err)
		}
		if i > 0 && took > 500*time.Millisecond {
			t.Errorf("connection %d from port %d, reusing a 4-tuple in TIME_WAIT, took %v", i, port, took)
		}
		time.Sleep(100 * time.Millisecond) // the last ACKs, well inside TIME_WAIT
	}
}
