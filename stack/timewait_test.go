package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
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
	remote := tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(netip.MustParseAddr("203.0.113.7")), Port: 80}

	const port = 40000
	for i := range 5 {
		start := time.Now()
		c, err := dialFromPort(e.guest, port, remote, 5*time.Second)
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

// dialFromPort connects g to remote from local port port (SO_REUSEADDR,
// as a guest reusing its port would).
func dialFromPort(g *gvstack.Stack, port uint16, remote tcpip.FullAddress, d time.Duration) (*gonet.TCPConn, error) {
	var wq waiter.Queue
	ep, tcpErr := g.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if tcpErr != nil {
		return nil, errors.New(tcpErr.String())
	}
	ep.SocketOptions().SetReuseAddress(true)
	if tcpErr := ep.Bind(tcpip.FullAddress{NIC: 1, Port: port}); tcpErr != nil {
		ep.Close()
		return nil, errors.New("bind: " + tcpErr.String())
	}
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	tcpErr = ep.Connect(remote)
	if _, ok := tcpErr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ch:
			tcpErr = ep.LastError()
		case <-time.After(d):
			ep.Close()
			return nil, errors.New("connect: timed out")
		}
	}
	if tcpErr != nil {
		ep.Close()
		return nil, errors.New("connect: " + tcpErr.String())
	}
	return gonet.NewTCPConn(&wq, ep), nil
}
