package stack

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/usernet/usernet/dhcp6"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// filterLink wraps the tap's link endpoint and sees every inbound frame
// before the stack does (the "intercept" choice for ICMP: a raw or packet
// endpoint would see packets only as copies, after the stack had already
// answered them; a nested link endpoint can consume them). It also defers
// attaching the child until Run starts, so New reads nothing from the tap.
//
// Outbound packets pass through unchanged (nested.Endpoint), which keeps
// GSO (a later Config.VnetHdr) transparent.
type filterLink struct {
	nested.Endpoint
	s *Stack

	mu         sync.Mutex
	dispatcher gvstack.NetworkDispatcher // guarded by mu; the NIC's, set by Attach
	started    bool                      // guarded by mu; Run called start
	stopped    bool                      // guarded by mu; stop or Attach(nil) called
}

var _ gvstack.LinkEndpoint = (*filterLink)(nil)
var _ gvstack.NetworkDispatcher = (*filterLink)(nil)

func newFilterLink(s *Stack, child gvstack.LinkEndpoint) *filterLink {
	l := &filterLink{s: s}
	l.Endpoint.Init(child, l)
	return l
}

// Attach implements stack.LinkEndpoint. The NIC attaches at CreateNIC
// time; the child is attached (and starts reading) only in start.
func (l *filterLink) Attach(d gvstack.NetworkDispatcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d == nil {
		l.stopped = true
		l.Endpoint.Attach(nil)
		return
	}
	l.dispatcher = d
	if l.started && !l.stopped {
		l.Endpoint.Attach(d)
	}
}

// start attaches the child: link.Tap starts its reader goroutine.
func (l *filterLink) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = true
	if l.dispatcher != nil && !l.stopped {
		l.Endpoint.Attach(l.dispatcher)
	}
}

// stop detaches the child; link.Tap stops its reader goroutine and waits
// for it. It must not be called with a stack lock held.
func (l *filterLink) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.Endpoint.Attach(nil)
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: it runs on the
// link's dispatch goroutine for every inbound frame.
func (l *filterLink) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	if l.s.intercept(proto, pkt) {
		return
	}
	l.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// intercept inspects one inbound packet and reports whether it consumed it
// (dropped it, or handled it outside the stack). It must be cheap for the
// common case (TCP and UDP data): a few header reads. Malformed packets
// are passed on for the stack to count and drop.
func (s *Stack) intercept(proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) (consumed bool) {
	defer func() {
		// Belt and braces: a bug in our parsing must cost one packet,
		// not the process.
		if r := recover(); r != nil {
			s.logf("stack: dropped a packet that made the link filter panic: %v", r)
			consumed = true
		}
	}()
	switch proto {
	case header.ARPProtocolNumber:
		return s.filterARP(pkt)
	case header.IPv4ProtocolNumber:
		return s.filterIPv4(pkt)
	case header.IPv6ProtocolNumber:
		if s.cfg.Plan.IPv6() {
			return s.filterIPv6(pkt)
		}
	}
	return false
}

// peek returns the first n bytes of pkt's data, contiguous, or fewer if
// the packet is shorter.
func peek(pkt *gvstack.PacketBuffer, n int) []byte {
	n = min(n, pkt.Data().Size())
	b, ok := pkt.Data().PullUp(n)
	if !ok {
		return nil
	}
	return b
}

// srcMAC returns the Ethernet source of an inbound frame, or "" if the
// link header is missing.
func srcMAC(pkt *gvstack.PacketBuffer) tcpip.LinkAddress {
	h := pkt.LinkHeader().Slice()
	if len(h) < header.EthernetMinimumSize {
		return ""
	}
	return header.Ethernet(h).SourceAddress()
}

// filterARP drops ARP requests for anything but our own addresses. With
// spoofing on, gVisor would answer for every address, including the
// guest's own (breaking its conflict detection) and its neighbors'.
func (s *Stack) filterARP(pkt *gvstack.PacketBuffer) bool {
	b := peek(pkt, header.ARPSize)
	if len(b) < header.ARPSize {
		return false
	}
	h := header.ARP(b)
	if !h.IsValid() {
		return false
	}
	if s.spoofed(netip.AddrFrom4([4]byte(h.ProtocolAddressSender()))) {
		return true
	}
	if h.Op() != header.ARPRequest {
		return false
	}
	target := netip.AddrFrom4([4]byte(h.ProtocolAddressTarget()))
	return !s.answersNeighbor(target)
}

// answersNeighbor reports whether the stack answers ARP and neighbor
// solicitations for a: its own addresses; on a mirrored network, also
// every other host's (the guest reaches them all through us), never the
// guest's own.
func (s *Stack) answersNeighbor(a netip.Addr) bool {
	plan := &s.cfg.Plan
	if plan.Mirrored(a) {
		return a.IsValid() && !a.IsUnspecified() && !plan.IsGuest(a)
	}
	return plan.IsOwn(a)
}

// maxSenders bounds the addresses learnSender remembers.
const maxSenders = 4096

// learnSender remembers the sender's MAC of a packet from an address
// outside the link's networks: a host behind the namespace, which routes its
// traffic to us without NAT (containers on a Podman bridge network without
// firewall rules). No one in the namespace answers ARP or neighbour
// solicitations for it, so the stack would never reach it; pasta answers
// every frame to the MAC it came from, and so does the stack now for such
// senders.
func (s *Stack) learnSender(src netip.Addr, proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	plan := &s.cfg.Plan
	// Addresses of the link's networks are resolved as usual (the
	// guest answers for its own, SLAAC ones too).
	if plan.IsGuest(src) || plan.Contains(src) || src.IsUnspecified() || src.IsLinkLocalUnicast() || src.IsMulticast() || s.isOwn(src) {
		return
	}
	if _, ok := s.senders.Load(src); ok {
		return
	}
	mac := srcMAC(pkt)
	if mac == "" || s.sendersN.Load() >= maxSenders {
		return
	}
	if _, loaded := s.senders.LoadOrStore(src, mac); loaded {
		return
	}
	s.sendersN.Add(1)
	if err := s.gv.AddStaticNeighbor(nicID, proto, tcpipAddr(src), mac); err != nil {
		s.logf("stack: neighbour %v at %v: %v", src, mac, err)
	}
}

// maxSolicitedGroups bounds the solicited-node groups joinSolicited joins:
// one per neighbour the guest looks for, on a mirrored network any host.
const maxSolicitedGroups = 4096

// joinSolicited joins the solicited-node multicast group grp, so that the
// stack hears (and, spoofing, answers) a multicast neighbour solicitation
// for an address of a mirrored network that is not its own: a host
// behind the guest's routes or on its other networks.
func (s *Stack) joinSolicited(grp netip.Addr) {
	s.solicitedMu.Lock()
	defer s.solicitedMu.Unlock()
	if _, ok := s.solicited[grp]; ok || len(s.solicited) >= maxSolicitedGroups {
		return
	}
	if s.solicited == nil {
		s.solicited = map[netip.Addr]struct{}{}
	}
	if err := s.gv.JoinGroup(header.IPv6ProtocolNumber, nicID, tcpipAddr(grp)); err != nil {
		s.logf("stack: join %v: %v", grp, err)
		return
	}
	s.solicited[grp] = struct{}{}
}

// deadGateway reports whether dst is the gateway of a virtual network
// that maps no host loopback (slirp4netns --disable-host-loopback): TCP
// and UDP to it get ICMP net unreachable.
func (s *Stack) deadGateway(dst netip.Addr) bool {
	plan := &s.cfg.Plan
	return !plan.Mirrored(dst) && (dst == plan.Gateway4 && !plan.HostLoopback4.IsValid() ||
		dst == plan.Gateway6 && plan.Gateway6.IsValid() && !plan.HostLoopback6.IsValid())
}

// filterIPv4 handles ICMP echo to the outside (forwarded through a host
// ping socket), drops ICMP to any other foreign address (gVisor would
// answer it), and answers TCP SYN / UDP to the gateway with ICMP net
// unreachable when it maps no host loopback (deadGateway).
func (s *Stack) filterIPv4(pkt *gvstack.PacketBuffer) bool {
	size := pkt.Data().Size()
	b := peek(pkt, header.IPv4MinimumSize)
	if len(b) < header.IPv4MinimumSize {
		return false
	}
	ip := header.IPv4(b)
	if !ip.IsValid(size) {
		return false
	}
	ihl := int(ip.HeaderLength())
	total := int(ip.TotalLength())
	dst := netip.AddrFrom4(ip.DestinationAddress().As4())
	src := netip.AddrFrom4(ip.SourceAddress().As4())
	if s.spoofed(src) {
		return true
	}
	s.learnSender(src, header.IPv4ProtocolNumber, pkt)
	firstFragment := ip.FragmentOffset() == 0
	fragmented := ip.More() || !firstFragment

	switch ip.TransportProtocol() {
	case header.ICMPv4ProtocolNumber:
		if s.isOwn(dst) {
			return false // the stack answers echo to .2 and .3 itself
		}
		if fragmented {
			// Reassembling is not worth it for ping; never let the
			// stack see (and answer) it.
			return true
		}
		b = peek(pkt, total)
		if len(b) < total || total-ihl < header.ICMPv4MinimumSize {
			return true
		}
		icmp := b[ihl:total]
		if header.ICMPv4(icmp).Type() == header.ICMPv4Echo && header.ICMPv4(icmp).Code() == 0 {
			s.forwardPing(src, dst, srcMAC(pkt), icmp)
		}
		return true
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		if ip.TransportProtocol() == header.UDPProtocolNumber && !fragmented && s.udpFastSend(pkt, src, dst, ihl, total) {
			return true
		}
		if ip.TransportProtocol() == header.TCPProtocolNumber && !fragmented {
			if s.direct != nil && s.direct.input(pkt, src, dst, ihl, total) {
				return true
			}
			s.noteSYN(pkt, src, dst, ihl)
		}
		if !firstFragment || !s.deadGateway(dst) {
			return false
		}
		return s.gatewayUnreachable(pkt, header.IPv4ProtocolNumber, ip.TransportProtocol(), src, dst, ihl, total)
	}
	return false
}

// filterIPv6 is filterIPv4 for IPv6, plus neighbor discovery: it drops
// neighbor solicitations for foreign addresses (with spoofing on, gVisor
// answers every unicast one, e.g. a NUD probe, and every multicast one
// whose solicited-node group it shares with one of its own addresses; a
// wrong answer for the guest's own address fails its duplicate address
// detection) and answers router solicitations with a router
// advertisement, and takes DHCPv6 to ff02::1:2 (dhcp6.go). Packets with
// extension headers go to the stack unchanged if they carry TCP or UDP,
// or are for our own addresses; the rest is dropped.
func (s *Stack) filterIPv6(pkt *gvstack.PacketBuffer) bool {
	size := pkt.Data().Size()
	b := peek(pkt, header.IPv6MinimumSize)
	if len(b) < header.IPv6MinimumSize {
		return false
	}
	ip := header.IPv6(b)
	if !ip.IsValid(size) {
		return false
	}
	const hl = header.IPv6MinimumSize
	total := hl + int(ip.PayloadLength())
	dst := netip.AddrFrom16(ip.DestinationAddress().As16())
	src := netip.AddrFrom16(ip.SourceAddress().As16())
	if s.spoofed(src) {
		return true
	}
	s.learnSender(src, header.IPv6ProtocolNumber, pkt)

	switch tcpip.TransportProtocolNumber(ip.NextHeader()) {
	case ipv6HopByHop, ipv6Routing, ipv6Fragment, ipv6DestOpts:
		// The stack would answer an echo request behind extension
		// headers for any address (it is promiscuous). Only TCP and UDP
		// go on to the forwarders; the rest is for our own addresses.
		if s.isOwn(dst) {
			return false
		}
		proto, _, ok := ipv6Upper(peek(pkt, min(total, maxIPv6Headers)))
		if ok && (proto == uint8(header.TCPProtocolNumber) || proto == uint8(header.UDPProtocolNumber)) {
			return false
		}
		return true
	case header.ICMPv6ProtocolNumber:
		b = peek(pkt, min(total, hl+header.ICMPv6NeighborSolicitMinimumSize))
		if len(b) < hl+header.ICMPv6MinimumSize {
			return false
		}
		switch header.ICMPv6(b[hl:]).Type() {
		case header.ICMPv6RouterSolicit:
			if !s.cfg.DisableRA {
				s.kickRA()
			}
			return true
		case header.ICMPv6NeighborSolicit:
			if len(b) < hl+header.ICMPv6NeighborSolicitMinimumSize {
				return false
			}
			target := netip.AddrFrom16([16]byte(b[hl+8 : hl+24]))
			if !s.answersNeighbor(target) {
				return true
			}
			if src.IsUnspecified() && !s.isOwn(target) {
				// Duplicate address detection of an address of the
				// guest's (its link-local one, say): no one else has it.
				// pasta answers no solicitation from ::.
				return true
			}
			if dst.IsMulticast() {
				s.joinSolicited(dst)
			}
			return false
		case header.ICMPv6EchoRequest:
			if s.isOwn(dst) {
				return false
			}
			b = peek(pkt, total)
			if len(b) < total || total-hl < header.ICMPv6EchoMinimumSize {
				return true
			}
			if header.ICMPv6(b[hl:]).Code() == 0 {
				s.forwardPing(src, dst, srcMAC(pkt), b[hl:total])
			}
			return true
		}
		return false
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
		// UDP right after the fixed header: no extension headers, so
		// not a fragment either.
		if s.dhcp6 != nil && dst == dhcp6.AllServers && tcpip.TransportProtocolNumber(ip.NextHeader()) == header.UDPProtocolNumber &&
			s.serveDHCP6(pkt, src, hl, total) {
			return true
		}
		if tcpip.TransportProtocolNumber(ip.NextHeader()) == header.UDPProtocolNumber && s.udpFastSend(pkt, src, dst, hl, total) {
			return true
		}
		if tcpip.TransportProtocolNumber(ip.NextHeader()) == header.TCPProtocolNumber {
			if s.direct != nil && s.direct.input(pkt, src, dst, hl, total) {
				return true
			}
			s.noteSYN(pkt, src, dst, hl)
		}
		if !s.deadGateway(dst) {
			return false
		}
		return s.gatewayUnreachable(pkt, header.IPv6ProtocolNumber, tcpip.TransportProtocolNumber(ip.NextHeader()), src, dst, hl, total)
	}
	return false
}

// maxIPv6Headers bounds how far the link filter looks for the upper layer
// of an IPv6 packet with extension headers.
const maxIPv6Headers = 512

// gatewayUnreachable answers a TCP SYN or a UDP datagram to a dead gateway
// (deadGateway) with ICMP destination unreachable, code "net
// unreachable" (IPv6: "no route"), so the guest's connect() fails with
// ENETUNREACH as with slirp4netns. Other TCP segments go on to the stack
// (which answers them with a RST), as do packets some endpoint of ours
// listens for on the gateway address.
func (s *Stack) gatewayUnreachable(pkt *gvstack.PacketBuffer, netProto tcpip.NetworkProtocolNumber, transProto tcpip.TransportProtocolNumber, src, dst netip.Addr, hl, total int) bool {
	b := peek(pkt, min(total, hl+header.TCPMinimumSize))
	if len(b) < hl+header.UDPMinimumSize {
		return false
	}
	srcPort := binary.BigEndian.Uint16(b[hl:])
	dstPort := binary.BigEndian.Uint16(b[hl+2:])
	if transProto == header.TCPProtocolNumber {
		if len(b) < hl+header.TCPMinimumSize {
			return false
		}
		flags := header.TCP(b[hl:]).Flags()
		if !flags.Contains(header.TCPFlagSyn) || flags.Contains(header.TCPFlagAck) {
			return false
		}
	}
	id := gvstack.TransportEndpointID{
		LocalPort:     dstPort,
		LocalAddress:  tcpipAddr(dst),
		RemotePort:    srcPort,
		RemoteAddress: tcpipAddr(src),
	}
	if s.gv.FindTransportEndpoint(netProto, transProto, id, nicID) != nil {
		return false
	}
	mac := srcMAC(pkt)
	if mac == "" {
		return true
	}
	quote := peek(pkt, total)
	if len(quote) < total {
		return true
	}
	s.queue(outPacket{mac: mac, proto: netProto, data: s.netUnreachable(src, quote[:total])})
	return true
}
