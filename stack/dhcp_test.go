package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/usernet/usernet/dhcp"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// dhcpClient is a test DHCP client speaking raw frames on the guest's link
// with its own MAC, as udhcpc does with a packet socket before it has an
// address.
type dhcpClient struct {
	e   *env
	mac tcpip.LinkAddress
	xid uint32
}

// frame builds m from src (0.0.0.0 before the client is bound) to dst:67,
// at the link layer to broadcast, or to the stack for a unicast dst.
func (c *dhcpClient) frame(m *dhcp.Message, src, dst netip.Addr) []byte {
	m.Op, m.HType, m.HLen, m.XID = dhcp.OpRequest, 1, 6, c.xid
	copy(m.CHAddr[:], c.mac)
	pkt := ipv4Packet(src, dst, header.UDPProtocolNumber,
		udpDatagram(netip.AddrPortFrom(src, dhcp.ClientPort), netip.AddrPortFrom(dst, dhcp.ServerPort), m.Marshal()))
	dstMAC := broadcastMAC
	if dst != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		dstMAC = stackMAC
	}
	frame := make([]byte, header.EthernetMinimumSize+len(pkt))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: c.mac, DstAddr: dstMAC, Type: ipv4.ProtocolNumber})
	copy(frame[header.EthernetMinimumSize:], pkt)
	return frame
}

func (c *dhcpClient) write(frame []byte) tcpip.Error {
	return c.e.guest.WriteRawPacket(1, ipv4.ProtocolNumber, buffer.MakeWithData(bytes.Clone(frame)))
}

// send transmits m once.
func (c *dhcpClient) send(t *testing.T, m *dhcp.Message, src, dst netip.Addr) {
	t.Helper()
	if err := c.write(c.frame(m, src, dst)); err != nil {
		t.Fatalf("WriteRawPacket(DHCP %v): %v", m.Type(), err)
	}
}

// dhcpReply is a reply as the client's link saw it.
type dhcpReply struct {
	msg    *dhcp.Message
	mac    tcpip.LinkAddress // Ethernet destination
	src    netip.Addr        // IP source
	dst    netip.Addr        // IP destination
	cksums bool              // IP and UDP checksums verify
}

// parseDHCPReply returns the DHCP reply in an IPv4 packet, or nil.
func parseDHCPReply(p []byte) *dhcpReply {
	if len(p) < header.IPv4MinimumSize+header.UDPMinimumSize || p[0] != 0x45 || p[9] != byte(header.UDPProtocolNumber) {
		return nil
	}
	u := p[header.IPv4MinimumSize:]
	if binary.BigEndian.Uint16(u[0:]) != dhcp.ServerPort || binary.BigEndian.Uint16(u[2:]) != dhcp.ClientPort {
		return nil
	}
	m, err := dhcp.Parse(u[header.UDPMinimumSize:])
	if err != nil {
		return nil
	}
	src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
	ok := header.IPv4(p).IsChecksumValid() &&
		header.UDP(u).IsChecksumValid(tcpipAddr(src), tcpipAddr(dst), checksum.Checksum(u[header.UDPMinimumSize:], 0))
	return &dhcpReply{msg: m, src: src, dst: dst, cksums: ok}
}

// exchange sends m and waits for the reply of type want to this client's
// current xid, from the server 10.0.2.2.
func (c *dhcpClient) exchange(t *testing.T, m *dhcp.Message, src, dst netip.Addr, want dhcp.MessageType) *dhcpReply {
	t.Helper()
	return c.exchangeFrom(t, m, src, dst, want, gw4)
}

// exchangeFrom is exchange with the server's address. It sends m again
// every 500ms, as clients do (the first frame may beat Run attaching the
// link).
func (c *dhcpClient) exchangeFrom(t *testing.T, m *dhcp.Message, src, dst netip.Addr, want dhcp.MessageType, server netip.Addr) *dhcpReply {
	t.Helper()
	frame := c.frame(m, src, dst)
	if err := c.write(frame); err != nil {
		t.Fatalf("WriteRawPacket(DHCP %v): %v", m.Type(), err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				c.write(frame)
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	var r *dhcpReply
	_, mac := c.e.sniff.waitForFrame(t, 10*time.Second, want.String()+" for "+net.HardwareAddr(c.mac).String(), func(_ tcpip.LinkAddress, p []byte) bool {
		r = parseDHCPReply(p)
		return r != nil && r.msg.XID == c.xid && bytes.Equal(r.msg.CHAddr[:6], []byte(c.mac)) && r.msg.Type() == want
	})
	r.mac = mac
	if !r.cksums {
		t.Errorf("%v: IP or UDP checksum does not verify", want)
	}
	if r.src != server {
		t.Errorf("%v from %v, want from the server, %v", want, r.src, server)
	}
	return r
}

// lease runs DISCOVER, REQUEST and returns the OFFER and the ACK.
func (c *dhcpClient) lease(t *testing.T) (offer, ack *dhcpReply) {
	t.Helper()
	any4 := netip.IPv4Unspecified()
	bcast := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	c.xid++
	offer = c.exchange(t, &dhcp.Message{Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Discover)}}}, any4, bcast, dhcp.Offer)
	c.xid++
	req := &dhcp.Message{Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Request)}}}
	req.Options.SetAddrs(dhcp.OptRequestedAddr, offer.msg.YIAddr)
	req.Options.SetAddrs(dhcp.OptServerID, offer.msg.Addr(dhcp.OptServerID))
	ack = c.exchange(t, req, any4, bcast, dhcp.Ack)
	if ack.msg.YIAddr != offer.msg.YIAddr {
		t.Errorf("ACK for %v, but the OFFER was %v", ack.msg.YIAddr, offer.msg.YIAddr)
	}
	return offer, ack
}

func serveNoDNS(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	<-ctx.Done()
	return nil
}

func TestDHCPLeasesLikeSlirp(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.ServeDNS = serveNoDNS
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)

	a := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0a", xid: 100}
	offer, ack := a.lease(t)
	if got := offer.msg.YIAddr; got != netip.MustParseAddr("10.0.2.15") {
		t.Fatalf("first client offered %v, want 10.0.2.15", got)
	}
	// No BROADCAST flag, no ciaddr: unicast to yiaddr at chaddr (RFC
	// 2131 §4.1); the client cannot answer ARP yet.
	for _, r := range []*dhcpReply{offer, ack} {
		if r.mac != a.mac || r.dst != netip.MustParseAddr("10.0.2.15") {
			t.Errorf("%v sent to %v at %v, want 10.0.2.15 at %v", r.msg.Type(), r.dst, net.HardwareAddr(r.mac), net.HardwareAddr(a.mac))
		}
	}
	want := map[byte][]byte{
		dhcp.OptSubnetMask: {255, 255, 255, 0},
		dhcp.OptRouter:     {10, 0, 2, 2},
		dhcp.OptDNS:        {10, 0, 2, 3},
		dhcp.OptServerID:   {10, 0, 2, 2},
		dhcp.OptLeaseTime:  {0, 1, 0x51, 0x80}, // 86400
	}
	for code, w := range want {
		if got := ack.msg.Options[code]; !bytes.Equal(got, w) {
			t.Errorf("ACK option %d = %v, want %v", code, got, w)
		}
	}

	b := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0b", xid: 200}
	if _, ack := b.lease(t); ack.msg.YIAddr != netip.MustParseAddr("10.0.2.16") {
		t.Errorf("second client got %v, want 10.0.2.16", ack.msg.YIAddr)
	}
	if _, ack := a.lease(t); ack.msg.YIAddr != netip.MustParseAddr("10.0.2.15") {
		t.Errorf("first client again got %v, want 10.0.2.15", ack.msg.YIAddr)
	}

	// RENEWING: unicast to the server from the leased address; the ACK
	// goes to ciaddr. Nothing of this may reach the host's 127.0.0.1:67.
	a.xid++
	renew := &dhcp.Message{CIAddr: netip.MustParseAddr("10.0.2.15"), Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Request)}}}
	if r := a.exchange(t, renew, netip.MustParseAddr("10.0.2.15"), gw4, dhcp.Ack); r.dst != netip.MustParseAddr("10.0.2.15") || r.mac != a.mac || r.msg.YIAddr != r.dst {
		t.Errorf("renewal ACK for %v sent to %v at %v, want 10.0.2.15 at %v", r.msg.YIAddr, r.dst, net.HardwareAddr(r.mac), net.HardwareAddr(a.mac))
	}

	// A wrong address: NAK, broadcast.
	b.xid++
	wrong := &dhcp.Message{Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Request)}}}
	wrong.Options.SetAddrs(dhcp.OptRequestedAddr, netip.MustParseAddr("10.0.2.15"))
	if r := b.exchange(t, wrong, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcp.Nak); r.mac != broadcastMAC || r.dst != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		t.Errorf("NAK sent to %v at %v, want broadcast", r.dst, net.HardwareAddr(r.mac))
	}

	if got := d.dialed(); len(got) != 0 {
		t.Errorf("DHCP traffic reached the host dialer: %v", got)
	}
}

func TestDHCPBroadcastFlagAndDisabledHostLoopback(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan.HostLoopback4, cfg.Plan.HostLoopback6 = netip.Addr{}, netip.Addr{} // must not turn DHCP renewals into ICMP errors
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)

	c := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0c", xid: 300}
	disc := &dhcp.Message{Flags: dhcp.FlagBroadcast, Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Discover)}}}
	r := c.exchange(t, disc, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcp.Offer)
	if r.mac != broadcastMAC || r.dst != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		t.Errorf("OFFER to a client with the BROADCAST flag sent to %v at %v, want broadcast", r.dst, net.HardwareAddr(r.mac))
	}
	if _, ok := r.msg.Options[dhcp.OptDNS]; ok {
		t.Errorf("OFFER names a DNS server (%v) although DNS is not served", r.msg.Options[dhcp.OptDNS])
	}

	c.xid++
	renew := &dhcp.Message{CIAddr: netip.MustParseAddr("10.0.2.15"), Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Request)}}}
	c.exchange(t, renew, netip.MustParseAddr("10.0.2.15"), gw4, dhcp.Ack)
	if e.sniff.any(func(p []byte) bool { return isICMPv4(p, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable) }) {
		t.Errorf("DHCP to the gateway was answered with ICMP net unreachable")
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("DHCP traffic reached the host dialer: %v", got)
	}
}

func TestDHCPSlash25PoolStartsAt143(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan = slirpPlan(t, "10.0.135.128/25", false)
	e := startEnv(t, cfg)
	c := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0d", xid: 400}
	// The reply comes from 10.0.135.130, which exchange checks is not
	// 10.0.2.2; check the rest here.
	r := c.exchangeFrom(t, &dhcp.Message{Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Discover)}}}, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcp.Offer, netip.MustParseAddr("10.0.135.130"))
	if r.msg.YIAddr != netip.MustParseAddr("10.0.135.143") {
		t.Errorf("offered %v, want 10.0.135.143", r.msg.YIAddr)
	}
	if got := r.msg.Options[dhcp.OptRouter]; !bytes.Equal(got, []byte{10, 0, 135, 130}) {
		t.Errorf("router %v, want 10.0.135.130", got)
	}
	if got := r.msg.Options[dhcp.OptSubnetMask]; !bytes.Equal(got, []byte{255, 255, 255, 128}) {
		t.Errorf("mask %v, want 255.255.255.128", got)
	}
}

func TestDHCPDisabledGetsNoAnswer(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.DisableDHCP = true
	d := &redirect{}
	cfg.host = d
	e := startEnv(t, cfg)
	// The link is up once the gateway answers.
	if guestPing(t, e.guest, gw4, []byte("up?"), 5*time.Second) == nil {
		t.Fatal("no echo reply from the gateway")
	}
	c := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0e", xid: 500}
	c.send(t, &dhcp.Message{Options: dhcp.Options{dhcp.OptMessageType: {byte(dhcp.Discover)}}}, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}))
	// Barrier: an echo to the gateway, sent after the DISCOVER, comes
	// back; a server would have had the DISCOVER first. Then allow the
	// (asynchronous) server a little longer.
	if guestPing(t, e.guest, gw4, []byte("barrier"), 5*time.Second) == nil {
		t.Fatal("no echo reply from the gateway")
	}
	time.Sleep(200 * time.Millisecond)
	if e.sniff.any(func(p []byte) bool { return parseDHCPReply(p) != nil }) {
		t.Errorf("DHCP answered with DisableDHCP")
	}
	if got := d.dialed(); len(got) != 0 {
		t.Errorf("a broadcast DISCOVER reached the host dialer: %v", got)
	}
}

// pasta's options: the advertised DNS and search list, -H and --fqdn.
func TestDHCPPastaOptions(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.ServeDNS = serveNoDNS
	cfg.Advertise = &Advertise{DNS4: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, Search: []string{"example.org", "example.net"}}
	cfg.Hostname, cfg.FQDN = "myhost", "myhost.example.org"
	e := startEnv(t, cfg)
	c := &dhcpClient{e: e, mac: "\x02\x00\x00\x00\x00\x0f", xid: 600}
	_, ack := c.lease(t)
	for code, want := range map[byte]string{
		dhcp.OptDNS:          "\xc0\x00\x02\x35",
		dhcp.OptHostname:     "myhost",
		dhcp.OptClientFQDN:   "\x04\xff\xff\x06myhost\x07example\x03org\x00", // as pasta 2025 sends it
		dhcp.OptDomainSearch: "\x07example\x03org\x00\x07example\x03net\x00",
	} {
		if got := string(ack.msg.Options[code]); got != want {
			t.Errorf("ACK option %d = %q, want %q", code, got, want)
		}
	}
}
