package stack

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/usernet/usernet/dhcp6"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The DHCPv6 server (pasta parity: without --config-net a client on the
// tap gets the plan's Guest6, the host's address). The protocol is
// package dhcp6; here is only the link.
//
// Clients send every message to ff02::1:2 port 547 from their link-local
// address. The link filter takes those datagrams before gVisor sees them
// (no endpoint has to be bound to a multicast group, and the frame tells
// the client's MAC), answers at once, and queues the reply for the control
// goroutine: from the stack's link-local address (Router6) to the client's
// address, port 546, at the frame's source MAC, so no neighbor resolution
// is needed.

// newDHCP6 builds the DHCPv6 server from the plan and the advertised
// configuration.
func (s *Stack) newDHCP6() error {
	plan := &s.cfg.Plan
	if !plan.IPv6() || !plan.Guest6.IsValid() {
		return fmt.Errorf("stack: DHCPv6 needs an IPv6 plan with the guest's address (plan: network %v, guest %v)", plan.Net6, plan.Guest6)
	}
	adv := s.advertised()
	srv, err := dhcp6.NewServer(dhcp6.Config{
		MAC:    []byte(s.mac),
		Addr:   plan.Guest6,
		OnLink: plan.Net6,
		DNS:    adv.DNS6,
		Search: adv.Search,
		FQDN:   s.cfg.FQDN,
	})
	if err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	s.dhcp6 = srv
	return nil
}

// serveDHCP6 answers a UDP datagram to ff02::1:2 (from the link filter;
// hl is the IPv6 header's length, total the packet's). It reports whether
// it consumed the packet: every datagram to port 547 is ours, answered or
// not; other ports go on to the stack.
func (s *Stack) serveDHCP6(pkt *gvstack.PacketBuffer, src netip.Addr, hl, total int) bool {
	b := peek(pkt, total)
	if len(b) < hl+header.UDPMinimumSize {
		return false // malformed: the stack counts and drops it
	}
	u := header.UDP(b[hl:total])
	if u.DestinationPort() != dhcp6.ServerPort {
		return false
	}
	n := int(u.Length())
	mac := srcMAC(pkt)
	// RFC 8415 §13.1: a client sends from its link-local address; the
	// reply could reach no other without a route.
	if n < header.UDPMinimumSize || n > len(u) || !src.IsLinkLocalUnicast() || mac == "" {
		return true
	}
	req, err := dhcp6.Parse(u[header.UDPMinimumSize:n])
	if err != nil {
		return true
	}
	rep := s.dhcp6.Handle(req)
	if rep == nil {
		return true
	}
	if rep.Type == dhcp6.Reply && rep.Options.Has(dhcp6.OptIANA) && (req.Type == dhcp6.Request || req.Type == dhcp6.Solicit) {
		s.logf("stack: DHCPv6: %v given to %v (%v)", s.cfg.Plan.Guest6, src, mac)
	}
	// Hop limit 255, as pasta's and as an RA's: the reply never leaves
	// the link.
	s.queue(outPacket{mac: mac, proto: header.IPv6ProtocolNumber, data: ipv6Packet(s.cfg.Plan.Router6, src, header.UDPProtocolNumber, 255,
		udpDatagram(netip.AddrPortFrom(s.cfg.Plan.Router6, dhcp6.ServerPort), netip.AddrPortFrom(src, dhcp6.ClientPort), rep.Marshal()))})
	return true
}

// Advertise is what the network's configuration services (DHCP, DHCPv6,
// router advertisements) name as DNS servers and search domains.
type Advertise struct {
	DNS4, DNS6 []netip.Addr
	Search     []string
}

// advertised is Config.Advertise, or by default (slirp4netns) the plan's
// DNS addresses when DNS is served, and no search list.
func (s *Stack) advertised() Advertise {
	if s.cfg.Advertise != nil {
		return *s.cfg.Advertise
	}
	var a Advertise
	if s.cfg.ServeDNS != nil {
		if s.cfg.Plan.DNS4.IsValid() {
			a.DNS4 = []netip.Addr{s.cfg.Plan.DNS4}
		}
		if s.cfg.Plan.IPv6() && s.cfg.Plan.DNS6.IsValid() {
			a.DNS6 = []netip.Addr{s.cfg.Plan.DNS6}
		}
	}
	return a
}

// rdnss and dnssl are the router advertisement's DNS options (RFC 8106),
// nil when there is nothing to advertise.
func rdnss(servers []netip.Addr) header.NDPRecursiveDNSServer {
	if len(servers) == 0 {
		return nil
	}
	o := make(header.NDPRecursiveDNSServer, 2+4, 2+4+16*len(servers)) // reserved, lifetime, addresses
	binary.BigEndian.PutUint32(o[2:], raRDNSSLifetime)
	for _, a := range servers {
		o = append(o, a.AsSlice()...)
	}
	return o
}

func dnssl(search []string) header.NDPDNSSearchList {
	names, err := dhcp6.EncodeDomains(search...)
	if len(search) == 0 || err != nil {
		return nil
	}
	o := make(header.NDPDNSSearchList, 2+4, 2+4+len(names)) // reserved, lifetime, names
	binary.BigEndian.PutUint32(o[2:], raRDNSSLifetime)
	return append(o, names...)
}
