package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/usernet/usernet/dhcp6"
	"github.com/usernet/usernet/netplan"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

var (
	pastaGuest6   = netip.MustParseAddr("2001:db8::10")
	pastaRouter6  = netip.MustParseAddr("fe80::1")
	clientLL      = netip.MustParseAddr("fe80::ff:fe00:64")
	allServersMAC = tcpip.LinkAddress("\x33\x33\x00\x01\x00\x02")
)

// mirrorPlan6 is mirrorPlan with the host's IPv6 network copied: the guest
// at the host's 2001:db8::10, the router 2001:db8::1, the stack's
// link-local fe80::1.
func mirrorPlan6(t testing.TB) netplan.Plan {
	t.Helper()
	p := mirrorPlan(t)
	p.Net6 = netip.MustParsePrefix("2001:db8::/64")
	p.Guest6 = pastaGuest6
	p.Gateway6 = netip.MustParseAddr("2001:db8::1")
	p.Router6 = pastaRouter6
	p.HostAddr6 = pastaGuest6
	if err := p.Validate(); err != nil {
		t.Fatalf("mirror plan: %v", err)
	}
	return p
}

// dhcp6Exchange sends m from the client's link-local address to
// ff02::1:2, again every 500ms (the first frame may beat Run attaching the
// link), until a reply with m's transaction ID reaches the guest, and
// checks how it came.
func dhcp6Exchange(t *testing.T, e *env, m *dhcp6.Message) *dhcp6.Message {
	t.Helper()
	pkt := ipv6Packet(clientLL, dhcp6.AllServers, header.UDPProtocolNumber, 1,
		udpDatagram(netip.AddrPortFrom(clientLL, dhcp6.ClientPort), netip.AddrPortFrom(dhcp6.AllServers, dhcp6.ServerPort), m.Marshal()))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			injectFrame(t, e.guest, ipv6.ProtocolNumber, allServersMAC, pkt)
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()
	var rep *dhcp6.Message
	p, mac := e.sniff.waitForFrame(t, 10*time.Second, m.Type.String()+"'s answer", func(_ tcpip.LinkAddress, p []byte) bool {
		if len(p) < header.IPv6MinimumSize+header.UDPMinimumSize || p[0]>>4 != 6 || p[6] != byte(header.UDPProtocolNumber) {
			return false
		}
		u := header.UDP(p[header.IPv6MinimumSize:])
		if u.SourcePort() != dhcp6.ServerPort || u.DestinationPort() != dhcp6.ClientPort {
			return false
		}
		r, err := dhcp6.Parse(u.Payload())
		if err != nil || r.TxID != m.TxID {
			return false
		}
		rep = r
		return true
	})
	ip := header.IPv6(p)
	src, dst := netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
	if src != pastaRouter6 || dst != clientLL || mac != guestMAC {
		t.Errorf("%v's answer from %v to %v at %v; want from %v to %v at the client's MAC", m.Type, src, dst, mac, pastaRouter6, clientLL)
	}
	u := header.UDP(ip.Payload())
	if !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0)) {
		t.Errorf("%v's answer: UDP checksum does not verify", m.Type)
	}
	return rep
}

func TestDHCPv6GivesTheGuestAddress(t *testing.T) {
	goroutineLeakCheck(t)
	cfg := testConfig(t)
	cfg.Plan = mirrorPlan6(t)
	cfg.DHCPv6 = true
	cfg.Advertise = &Advertise{DNS6: []netip.Addr{netip.MustParseAddr("2001:db8::53")}, Search: []string{"example.org"}}
	cfg.FQDN = "h.example.org"
	e := startEnv(t, cfg)

	client := []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 0x64}
	ia := dhcp6.IA{IAID: [4]byte{0, 0, 0, 1}}
	sol := &dhcp6.Message{Type: dhcp6.Solicit, TxID: [3]byte{1, 2, 3}, Options: dhcp6.Options{
		{Code: dhcp6.OptClientID, Data: client},
		{Code: dhcp6.OptIANA, Data: ia.Marshal()},
	}}
	adv := dhcp6Exchange(t, e, sol)
	if adv.Type != dhcp6.Advertise {
		t.Fatalf("Solicit answered with %v, want ADVERTISE", adv.Type)
	}
	serverID, _ := adv.Options.Get(dhcp6.OptServerID)
	if want := dhcp6.DUIDLL([]byte(stackMAC)); !bytes.Equal(serverID, want) {
		t.Errorf("Server ID %x, want the DUID-LL of the stack's MAC, %x", serverID, want)
	}

	req := &dhcp6.Message{Type: dhcp6.Request, TxID: [3]byte{4, 5, 6}, Options: dhcp6.Options{
		{Code: dhcp6.OptClientID, Data: client},
		{Code: dhcp6.OptServerID, Data: serverID},
		{Code: dhcp6.OptIANA, Data: ia.Marshal()},
	}}
	rep := dhcp6Exchange(t, e, req)
	if rep.Type != dhcp6.Reply {
		t.Fatalf("Request answered with %v, want REPLY", rep.Type)
	}
	d, _ := rep.Options.Get(dhcp6.OptIANA)
	if p, v, ok := dhcp6.Lifetimes(d, pastaGuest6); !ok || p != dhcp6.Infinity || v != dhcp6.Infinity {
		t.Errorf("Reply's IA_NA %x: %v with lifetimes %d %d (%v), want it for ever", d, pastaGuest6, p, v, ok)
	}
	dns, _ := rep.Options.Get(dhcp6.OptDNSServers)
	search, _ := rep.Options.Get(dhcp6.OptDomainList)
	fqdn, _ := rep.Options.Get(dhcp6.OptFQDN)
	if !bytes.Equal(dns, netip.MustParseAddr("2001:db8::53").AsSlice()) || string(search) != "\x07example\x03org\x00" || string(fqdn) != "\x00\x01h\x07example\x03org\x00" {
		t.Errorf("Reply's DNS %x, search %q, FQDN %q; want the configured ones", dns, search, fqdn)
	}

	// The router advertisement says addresses come from DHCPv6 (M), and
	// carries the advertised DNS server and search list.
	ra := e.sniff.waitFor(t, 10*time.Second, "router advertisement", func(p []byte) bool {
		return len(p) > 40 && p[0]>>4 == 6 && p[6] == byte(header.ICMPv6ProtocolNumber) && p[40] == byte(header.ICMPv6RouterAdvert)
	})
	if flags := ra[40+5]; flags != 0x80 {
		t.Errorf("RA flags %#x, want M only (0x80)", flags)
	}
	it, err := header.NDPOptions(ra[40+header.ICMPv6HeaderSize+header.NDPRAMinimumSize:]).Iter(true)
	if err != nil {
		t.Fatalf("RA options: %v", err)
	}
	var gotRDNSS, gotDNSSL bool
	for {
		o, done, err := it.Next()
		if err != nil || done {
			break
		}
		switch o := o.(type) {
		case header.NDPRecursiveDNSServer:
			a, _ := o.Addresses()
			gotRDNSS = len(a) == 1 && a[0] == tcpipAddr(netip.MustParseAddr("2001:db8::53"))
		case header.NDPDNSSearchList:
			n, _ := o.DomainNames()
			gotDNSSL = len(n) == 1 && n[0] == "example.org"
		}
	}
	if !gotRDNSS || !gotDNSSL {
		t.Errorf("RA: RDNSS 2001:db8::53 %v, DNSSL example.org %v; want both", gotRDNSS, gotDNSSL)
	}
}

// Without Config.DHCPv6 (slirp4netns, pasta --no-dhcpv6) nothing answers,
// and the RA's flags stay 0.
func TestDHCPv6Off(t *testing.T) {
	cfg := testConfig(t)
	cfg.Plan = mirrorPlan6(t)
	e := startEnv(t, cfg)
	sol := &dhcp6.Message{Type: dhcp6.Solicit, TxID: [3]byte{7, 7, 7}, Options: dhcp6.Options{
		{Code: dhcp6.OptClientID, Data: []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 0x64}},
		{Code: dhcp6.OptIANA, Data: make([]byte, 12)},
	}}
	pkt := ipv6Packet(clientLL, dhcp6.AllServers, header.UDPProtocolNumber, 1,
		udpDatagram(netip.AddrPortFrom(clientLL, dhcp6.ClientPort), netip.AddrPortFrom(dhcp6.AllServers, dhcp6.ServerPort), sol.Marshal()))
	ra := e.sniff.waitFor(t, 10*time.Second, "router advertisement", func(p []byte) bool {
		return len(p) > 40 && p[0]>>4 == 6 && p[6] == byte(header.ICMPv6ProtocolNumber) && p[40] == byte(header.ICMPv6RouterAdvert)
	})
	if ra[45] != 0 {
		t.Errorf("RA flags %#x without DHCPv6, want 0", ra[45])
	}
	for range 3 {
		injectFrame(t, e.guest, ipv6.ProtocolNumber, allServersMAC, pkt)
		time.Sleep(200 * time.Millisecond)
	}
	if e.sniff.any(func(p []byte) bool {
		return len(p) >= 48 && p[6] == byte(header.UDPProtocolNumber) && binary.BigEndian.Uint16(p[40:]) == dhcp6.ServerPort
	}) {
		t.Errorf("a DHCPv6 answer reached the guest without Config.DHCPv6")
	}
}

func TestDHCPv6NeedsTheGuestAddress(t *testing.T) {
	cfg := testConfig(t)
	cfg.Plan = testPlan(t, true) // slirp4netns's: SLAAC, no Guest6
	cfg.DHCPv6 = true
	_, stackLink := pipe.New(guestMAC, stackMAC, 1500)
	if s, err := newStack(cfg, ethernet.New(stackLink)); err == nil {
		s.Close()
		t.Fatal("newStack with DHCPv6 and no Guest6: nil error")
	}
}
