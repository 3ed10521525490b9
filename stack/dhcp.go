package stack

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/usernet/usernet/dhcp"
	"github.com/usernet/usernet/dhcp6"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The DHCP server (slirp4netns parity: a guest that does not use
// --configure, e.g. busybox udhcpc, gets an address of the plan's DHCP
// pool, which starts at network+15 in slirp4netns's plan). The protocol
// and the lease table are package dhcp; here are only the sockets.
//
// Requests arrive at two gVisor UDP endpoints, bound to
// 255.255.255.255:67 (DISCOVER, REQUEST in SELECTING/INIT-REBOOT/
// REBINDING) and to the gateway's :67 (unicast REQUEST when RENEWING,
// RELEASE, INFORM), the two addresses libslirp answers on. Bound endpoints
// are matched before the UDP forwarder is consulted, so DHCP traffic
// never reaches the host: not even the gateway's :67, which would
// otherwise be forwarded to the host's 127.0.0.1:67. DHCP to any other
// address is ordinary UDP, forwarded as libslirp does.
//
// Replies are built here and written as raw frames: a client without an
// address cannot answer ARP for the yiaddr the reply goes to, so the
// Ethernet destination must be chaddr (or broadcast), which a UDP socket
// cannot choose.

var broadcastMAC = tcpip.LinkAddress("\xff\xff\xff\xff\xff\xff")

// bindDHCP creates the lease table and binds the server's endpoints.
func (s *Stack) bindDHCP() error {
	plan := &s.cfg.Plan
	cfg := dhcp.Config{
		Network:   plan.Net4,
		ServerID:  plan.Gateway4,
		PoolStart: plan.DHCPStart4,
		PoolSize:  plan.DHCPSize,
	}
	adv := s.advertised()
	cfg.DNS = adv.DNS4
	extra, err := dhcpExtra(adv.Search, s.cfg.Hostname, s.cfg.FQDN)
	if err != nil {
		return fmt.Errorf("stack: DHCP: %w", err)
	}
	cfg.Extra = extra
	srv, err := dhcp.NewServer(cfg)
	if err != nil {
		return err
	}
	s.dhcp = srv
	for _, a := range []tcpip.Address{header.IPv4Broadcast, tcpipAddr(plan.Gateway4)} {
		full := tcpip.FullAddress{NIC: nicID, Addr: a, Port: dhcp.ServerPort}
		pc, err := gonet.DialUDP(s.gv, &full, nil, header.IPv4ProtocolNumber)
		if err != nil {
			for _, c := range s.dhcpConns {
				c.Close()
			}
			return err
		}
		s.dhcpConns = append(s.dhcpConns, pc)
	}
	return nil
}

// dhcpExtra are the options pasta adds to its DHCP replies: the search
// list (119, RFC 3397), the hostname (12) and the client's FQDN (81, RFC
// 4702: flags E, the name in wire format, both RCODEs 255 as RFC 4702
// §4 asks of a server).
func dhcpExtra(search []string, hostname, fqdn string) (dhcp.Options, error) {
	o := dhcp.Options{}
	if len(search) > 0 {
		b, err := dhcp6.EncodeDomains(search...)
		if err != nil {
			return nil, fmt.Errorf("search list: %w", err)
		}
		o[dhcp.OptDomainSearch] = b
	}
	if hostname != "" {
		if len(hostname) > 255 {
			return nil, fmt.Errorf("hostname of %d bytes, over 255", len(hostname))
		}
		o[dhcp.OptHostname] = []byte(hostname)
	}
	if fqdn != "" {
		b, err := dhcp6.EncodeDomains(fqdn)
		if err != nil {
			return nil, fmt.Errorf("FQDN: %w", err)
		}
		o[dhcp.OptClientFQDN] = append([]byte{0x04, 0xff, 0xff}, b...)
	}
	return o, nil
}

// serveDHCP answers the requests arriving at pc until the Stack shuts
// down. Anything that is not a DHCP request is dropped without a word.
func (s *Stack) serveDHCP(pc *gonet.UDPConn) {
	stop := context.AfterFunc(s.ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			if s.ctx.Err() == nil {
				s.logf("stack: DHCP on %v: %v", pc.LocalAddr(), err)
			}
			return
		}
		req, err := dhcp.Parse(buf[:n])
		if err != nil {
			continue
		}
		r := s.dhcp.Handle(req)
		if r == nil {
			continue
		}
		if r.Msg.Type() == dhcp.Ack && r.Msg.YIAddr.IsValid() {
			s.logf("stack: DHCP: %v acked to %v", r.Msg.YIAddr, req.HardwareAddr())
		}
		dst, mac := netip.AddrFrom4([4]byte{255, 255, 255, 255}), broadcastMAC
		if !r.Broadcast {
			dst, mac = r.IP, tcpip.LinkAddress(r.HW)
		}
		s.write(outPacket{
			mac:   mac,
			proto: header.IPv4ProtocolNumber,
			data: ipv4Packet(s.cfg.Plan.Gateway4, dst, header.UDPProtocolNumber,
				udpDatagram(netip.AddrPortFrom(s.cfg.Plan.Gateway4, dhcp.ServerPort), netip.AddrPortFrom(dst, dhcp.ClientPort), r.Msg.Marshal())),
		})
	}
}

// udpDatagram builds a UDP datagram (header and payload) with its checksum
// over the pseudo-header of src and dst, IPv4 or IPv6.
func udpDatagram(src, dst netip.AddrPort, payload []byte) []byte {
	d := header.UDP(make([]byte, header.UDPMinimumSize+len(payload)))
	d.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(d))})
	copy(d.Payload(), payload)
	sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpipAddr(src.Addr()), tcpipAddr(dst.Addr()), uint16(len(d)))
	sum = d.CalculateChecksum(checksum.Checksum(payload, sum))
	// RFC 768: a checksum that comes out 0 (a sum of all ones) is sent as
	// all ones, since 0 means "no checksum".
	if sum != 0xffff {
		sum = ^sum
	}
	d.SetChecksum(sum)
	return d
}
