package stack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestSenderBehindGuest: a connection from an address behind the guest
// (a container on a bridge inside the namespace, without NAT), for which
// nobody on the link answers ARP, is answered to the MAC it came from.
func TestSenderBehindGuest(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	cfg := testConfig(t)
	// A sender behind the guest is not on the virtual network: pasta's
	// front end serves any source (Limits.AnySource); slirp4netns's
	// would need --allow-source for it.
	cfg.Limits.AnySource = true
	cfg.host = &redirect{to: func(context.Context, string, netip.AddrPort) (netip.AddrPort, error) {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(ln.Addr())), nil
	}}
	behind := netip.MustParseAddr("10.89.0.2")
	e := startEnv(t, cfg)
	// The guest holds the address, but, as a namespace routing for a bridge
	// would, answers no ARP request for it.
	e.sniff.drop(func(b []byte) bool {
		return len(b) >= header.ARPSize && header.ARP(b).IsValid() && header.ARP(b).Op() == header.ARPRequest &&
			netip.AddrFrom4([4]byte(header.ARP(b).ProtocolAddressTarget())) == behind
	})
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(behind), PrefixLen: 32}}
	if err := e.guest.AddProtocolAddress(1, pa, gvstack.AddressProperties{}); err != nil {
		t.Fatalf("guest AddProtocolAddress: %v", err)
	}
	// The guest resolves its gateway from its own address first: a
	// namespace forwarding for a bridge asks from its own, so the stack
	// learns nothing of the address behind it from the ARP request.
	first, err := guestDial(t, e.guest, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatalf("dial %v:80 from the guest's address: %v", outside, err)
	}
	first.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := gonet.DialTCPWithBind(ctx, e.guest,
		tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(behind)},
		tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(outside), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial %v:80 from %v: %v", outside, behind, err)
	}
	defer c.Close()
	io.WriteString(c, "from behind")
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "from behind" {
		t.Errorf("echo = %q, %v", b, err)
	}
}
