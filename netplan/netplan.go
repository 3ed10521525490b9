// Package netplan is the address plan of one virtual network: the IPv4
// network and the guest's, the gateway's, the DNS forwarder's addresses and
// the DHCP pool in it, and the same for IPv6. A front end builds the Plan
// once (Slirp for slirp4netns's --cidr and --enable-ipv6); the stack, the
// port forwards and the front end's own output read its fields and never
// derive an address themselves, so a plan with other offsets (a guest
// that keeps the host's address, a DNS address outside the network) needs
// no change anywhere else.
//
// netplan is a leaf: it must not import gVisor or any other usernet
// package, so that every one of them can read it.
package netplan

import (
	"errors"
	"fmt"
	"net/netip"
)

// Plan is every address of the virtual network, each stated explicitly.
// IPv4 is always on; IPv6 is on when Net6 is valid, and then its fields but
// Guest6 are set. The zero Plan is invalid; Validate says why.
type Plan struct {
	// Net4 is the IPv4 network of the link (a masked prefix).
	Net4 netip.Prefix
	// Guest4 is the guest's address in Net4: what --configure gives the
	// interface, and the default destination of port forwards.
	Guest4 netip.Addr
	// Gateway4 is the stack's address in Net4: the guest's router, the
	// DHCP server, and the host's loopback to the guest.
	Gateway4 netip.Addr
	// DNS4 is where the stack serves DNS. It need not be in Net4 (the
	// guest routes to it through Gateway4 then). Invalid: the plan has no
	// DNS address (pasta without --dns-forward).
	DNS4 netip.Addr
	// DHCPStart4 and DHCPSize are the addresses the DHCP server leases:
	// DHCPStart4 and the DHCPSize-1 that follow it, all in Net4.
	DHCPStart4 netip.Addr
	DHCPSize   int

	// Net6 is the IPv6 network of the link; invalid means IPv6 is off.
	Net6 netip.Prefix
	// Guest6 is the guest's address in Net6, when the front end knows
	// it; invalid when the guest makes its own by SLAAC.
	Guest6 netip.Addr
	// Gateway6 is the stack's address in Net6, the guest's router (on a
	// mirrored network it may be the host's link-local router address);
	// DNS6 is where it serves DNS over IPv6 (invalid: nowhere).
	Gateway6, DNS6 netip.Addr
	// Router6 is the stack's link-local address: the source of router
	// advertisements, which RFC 4861 requires to be link-local.
	Router6 netip.Addr

	// HostLoopback4 and HostLoopback6 are the addresses that reach the
	// host's loopback (127.0.0.1, ::1); invalid means none does.
	// slirp4netns: the gateways, unless --disable-host-loopback; pasta:
	// the gateways unless --no-map-gw, or --map-host-loopback's.
	HostLoopback4, HostLoopback6 netip.Addr
	// GuestAlias4 and GuestAlias6 reach, from the guest, HostAddr4 and
	// HostAddr6: the host's own addresses, which the guest shares when
	// they are copied (pasta's --map-guest-addr: Podman's
	// host.containers.internal); invalid means none does.
	GuestAlias4, GuestAlias6 netip.Addr
	HostAddr4, HostAddr6     netip.Addr

	// Addrs4 and Addrs6 are every address of the guest's interface, in
	// the order it gets them, when it has more than Guest4 and Guest6
	// (pasta's --config-net copies every address of the host's template
	// interface); Guest4 and Guest6 are among them. Empty: just Guest4
	// (Guest6) with Net4's (Net6's) prefix; GuestAddrs says which.
	Addrs4, Addrs6 []netip.Prefix
	// NoBroadcast4 gives the guest's IPv4 addresses no broadcast
	// address, as pasta's copies of a host's addresses that have none.
	NoBroadcast4 bool
	// Routes are the guest's routes when a front end copies them (pasta's
	// --config-net); empty: a default route through each gateway.
	Routes []Route

	// Mirror says the networks are the host's own, copied (pasta): their
	// other addresses are real hosts, reached through the host's sockets,
	// and the stack answers the guest's neighbour queries for all of them.
	// Without it (slirp4netns) the networks are virtual: none of their
	// addresses is ever dialed on the host. Mirror is IPv4's; Mirror6
	// IPv6's (pasta copies the host's IPv6 network also when -a gives an
	// IPv4 address of another network, as rootlesskit's).
	Mirror, Mirror6 bool
}

// Route is one route of the guest's routing table.
type Route struct {
	// Dst is the destination, 0.0.0.0/0 or ::/0 for a default route.
	Dst netip.Prefix
	// Gateway is the next hop; invalid: the destination is on the link.
	Gateway netip.Addr
	// Metric, Protocol, Scope, Type and Flags are rtnetlink's values,
	// as the host's table has them: a copied route shows in the
	// namespace as it does on the host (0: the kernel's default).
	Metric                       int
	Protocol, Scope, Type, Flags int
}

// slirp4netns's offsets in the --cidr network (libslirp's vhost, vnameserver,
// vdhcp_start and NB_BOOTP_CLIENTS; slirp4netns recommends +100).
const (
	slirpGateway   = 2
	slirpDNS       = 3
	slirpDHCPStart = 15
	slirpDHCPSize  = 16
	slirpGuest     = 100
)

// slirp4netns's fixed IPv6 plan.
var (
	slirpNet6     = netip.MustParsePrefix("fd00::/64")
	slirpGateway6 = netip.MustParseAddr("fd00::2")
	slirpDNS6     = netip.MustParseAddr("fd00::3")
	slirpRouter6  = netip.MustParseAddr("fe80::2")
)

// Slirp returns slirp4netns's plan for --cidr=cidr (and --enable-ipv6 when
// ipv6). cidr must be an IPv4 network address with a prefix length of 1–25,
// which leaves room for +100; the errors are slirp4netns's texts.
func Slirp(cidr netip.Prefix, ipv6 bool) (Plan, error) {
	if !cidr.IsValid() || !cidr.Addr().Is4() {
		return Plan{}, fmt.Errorf("invalid CIDR: %s", cidr)
	}
	if cidr.Bits() < 1 || cidr.Bits() > 25 {
		return Plan{}, errors.New("prefix length needs to be 1-25")
	}
	if cidr.Masked() != cidr {
		// slirp4netns prints this fixed text whatever the input.
		return Plan{}, errors.New("CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24")
	}
	n := cidr.Addr()
	p := Plan{
		Net4:       cidr,
		Guest4:     add4(n, slirpGuest),
		Gateway4:   add4(n, slirpGateway),
		DNS4:       add4(n, slirpDNS),
		DHCPStart4: add4(n, slirpDHCPStart),
		DHCPSize:   slirpDHCPSize,
	}
	p.HostLoopback4 = p.Gateway4
	if ipv6 {
		p.Net6 = slirpNet6
		p.Gateway6 = slirpGateway6
		p.DNS6 = slirpDNS6
		p.Router6 = slirpRouter6
		p.HostLoopback6 = p.Gateway6
	}
	if err := p.Validate(); err != nil {
		return Plan{}, err // a bug in the offsets above, not the caller's
	}
	return p, nil
}

// IPv6 reports whether the plan has an IPv6 network.
func (p Plan) IPv6() bool { return p.Net6.IsValid() }

// IsOwn reports whether a is one of the stack's own addresses (gateway,
// DNS, router), which it answers itself.
func (p Plan) IsOwn(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	return a == p.Gateway4 || a == p.DNS4 ||
		(p.IPv6() && (a == p.Gateway6 || a == p.DNS6 || a == p.Router6))
}

// Contains reports whether a is inside the plan's networks: in Net4, or in
// Net6 when IPv6 is on.
func (p Plan) Contains(a netip.Addr) bool {
	return p.Net4.Contains(a) || (p.IPv6() && p.Net6.Contains(a))
}

// Virtual reports whether a belongs to the virtual network, whose
// addresses are never the host network's: inside the plan's networks
// without Mirror; with Mirror, only the guest's own.
func (p Plan) Virtual(a netip.Addr) bool {
	if p.Mirrored(a) {
		return p.IsGuest(a)
	}
	return p.Contains(a)
}

// Mirrored reports whether a's family's network is the host's, copied
// (Mirror, Mirror6).
func (p Plan) Mirrored(a netip.Addr) bool {
	if a.Is4() || a.Is4In6() {
		return p.Mirror
	}
	return p.Mirror6
}

// IsGuest reports whether a is one of the guest's own addresses.
func (p Plan) IsGuest(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	if a == p.Guest4 || a == p.Guest6 {
		return true
	}
	for _, q := range append(p.Addrs4[:len(p.Addrs4):len(p.Addrs4)], p.Addrs6...) {
		if q.Addr() == a {
			return true
		}
	}
	return false
}

// GuestAddrs returns every address of the guest's interface for one
// family (IPv6 when v6), with prefixes, in order: Addrs4 (Addrs6), else
// Guest4 (Guest6) in its network, else none.
func (p Plan) GuestAddrs(v6 bool) []netip.Prefix {
	addrs, guest, net := p.Addrs4, p.Guest4, p.Net4
	if v6 {
		addrs, guest, net = p.Addrs6, p.Guest6, p.Net6
	}
	if len(addrs) > 0 {
		return addrs
	}
	if !guest.IsValid() || !net.IsValid() {
		return nil
	}
	return []netip.Prefix{netip.PrefixFrom(guest, net.Bits())}
}

// Netmask4 is Net4's mask as an address (255.255.255.0 for a /24), or
// the invalid address if Net4 is not IPv4.
func (p Plan) Netmask4() netip.Addr {
	if !p.Net4.Addr().Is4() {
		return netip.Addr{}
	}
	return netip.AddrFrom4(u32to4(^uint32(0) << (32 - p.Net4.Bits())))
}

// Broadcast4 is the last address of Net4, or the invalid address if Net4
// is not IPv4.
func (p Plan) Broadcast4() netip.Addr {
	if !p.Net4.Addr().Is4() {
		return netip.Addr{}
	}
	return netip.AddrFrom4(u32to4(u32(p.Net4.Addr()) | ^uint32(0)>>p.Net4.Bits()))
}

// DHCPEnd4 is the last address of the DHCP pool, or the invalid address
// if there is no pool.
func (p Plan) DHCPEnd4() netip.Addr {
	if !p.DHCPStart4.Is4() || p.DHCPSize < 1 {
		return netip.Addr{}
	}
	return add4(p.DHCPStart4, uint32(p.DHCPSize-1))
}

// Validate checks that the plan is consistent: each address of its family
// and where the stack needs it, and no address used for two things.
func (p Plan) Validate() error {
	if err := p.validate4(); err != nil {
		return fmt.Errorf("netplan: %w", err)
	}
	if err := p.validate6(); err != nil {
		return fmt.Errorf("netplan: %w", err)
	}
	if err := p.validateMore(); err != nil {
		return fmt.Errorf("netplan: %w", err)
	}
	return nil
}

// validateMore checks Addrs4, Addrs6 and Routes: the guest's own
// addresses among them, none of them the stack's, each of its family.
func (p Plan) validateMore() error {
	for _, f := range []struct {
		addrs []netip.Prefix
		guest netip.Addr
		is4   bool
	}{{p.Addrs4, p.Guest4, true}, {p.Addrs6, p.Guest6, false}} {
		if len(f.addrs) == 0 {
			continue
		}
		found := false
		for _, q := range f.addrs {
			if !q.IsValid() || q.Addr().Is4() != f.is4 || q.Addr().Zone() != "" || p.IsOwn(q.Addr()) {
				return fmt.Errorf("guest address %v is not a host address of its family other than the stack's", q)
			}
			found = found || q.Addr() == f.guest
		}
		if !found {
			return fmt.Errorf("guest address %v is not among the guest's addresses %v", f.guest, f.addrs)
		}
	}
	for _, r := range p.Routes {
		if !r.Dst.IsValid() || r.Dst.Masked() != r.Dst || (r.Gateway.IsValid() && r.Gateway.Is4() != r.Dst.Addr().Is4()) {
			return fmt.Errorf("route to %v via %v is not a route", r.Dst, r.Gateway)
		}
		if r.Dst.Addr().Is6() && !p.IPv6() {
			return fmt.Errorf("IPv6 route to %v without an IPv6 network", r.Dst)
		}
	}
	return nil
}

func (p Plan) validate4() error {
	n := p.Net4
	// /31 and /32 leave no room for a gateway and a guest besides the
	// network and broadcast addresses.
	if !n.IsValid() || !n.Addr().Is4() || n.Bits() < 1 || n.Bits() > 30 {
		return fmt.Errorf("IPv4 network %v is not an IPv4 prefix of length 1-30", n)
	}
	if n.Masked() != n {
		return fmt.Errorf("IPv4 network %v is not a network address (%v)", n, n.Masked())
	}
	if err := p.inNet4("gateway", p.Gateway4); err != nil && !p.onLink(p.Gateway4) {
		return err
	}
	if err := p.inNet4("guest", p.Guest4); err != nil {
		return err
	}
	if p.DNS4.IsValid() && (!unicast4(p.DNS4) || p.DNS4 == n.Addr() || p.DNS4 == p.Broadcast4()) {
		return fmt.Errorf("DNS address %v is not a unicast IPv4 address", p.DNS4)
	}
	if p.DHCPSize < 1 {
		return fmt.Errorf("DHCP pool size %d is not positive", p.DHCPSize)
	}
	if err := p.inNet4("DHCP pool start", p.DHCPStart4); err != nil {
		return err
	}
	end := u32(p.DHCPStart4) + uint32(p.DHCPSize-1)
	if end < u32(p.DHCPStart4) || end >= u32(p.Broadcast4()) {
		return fmt.Errorf("DHCP pool %v+%d does not fit in %v", p.DHCPStart4, p.DHCPSize, n)
	}
	inPool := func(a netip.Addr) bool { return a.Is4() && u32(a) >= u32(p.DHCPStart4) && u32(a) <= end }
	switch {
	case p.Guest4 == p.Gateway4:
		return fmt.Errorf("guest %v is the gateway", p.Guest4)
	case p.DNS4.IsValid() && (p.DNS4 == p.Gateway4 || p.DNS4 == p.Guest4):
		return fmt.Errorf("DNS address %v is the gateway's or the guest's", p.DNS4)
	case inPool(p.Gateway4) || inPool(p.DNS4):
		// The guest's own address may be leased to it; the stack's not.
		return fmt.Errorf("DHCP pool %v+%d holds the gateway or the DNS address", p.DHCPStart4, p.DHCPSize)
	}
	return nil
}

// inNet4 checks that a is a host address of Net4.
func (p Plan) inNet4(what string, a netip.Addr) error {
	if !a.Is4() || !p.Net4.Contains(a) || a == p.Net4.Addr() || a == p.Broadcast4() {
		return fmt.Errorf("%s %v is not a host address in %v", what, a, p.Net4)
	}
	return nil
}

func (p Plan) validate6() error {
	n := p.Net6
	if !n.IsValid() {
		if p.Guest6.IsValid() || p.Gateway6.IsValid() || p.DNS6.IsValid() || p.Router6.IsValid() {
			return errors.New("IPv6 addresses without an IPv6 network")
		}
		return nil
	}
	if !n.Addr().Is6() || n.Addr().Is4In6() || n.Addr().Zone() != "" || n.Masked() != n || n.Bits() > 126 {
		return fmt.Errorf("IPv6 network %v is not an IPv6 network address", n)
	}
	// A router's link-local address is the usual IPv6 gateway of a host,
	// which pasta's plans copy.
	linkLocalGW := p.Gateway6.IsLinkLocalUnicast()
	if !unicast6(p.Gateway6) || (!linkLocalGW && (!n.Contains(p.Gateway6) || p.Gateway6 == n.Addr()) && !p.onLink(p.Gateway6)) {
		return fmt.Errorf("IPv6 gateway %v is not a host address in %v", p.Gateway6, n)
	}
	if !unicast6(p.Router6) || !p.Router6.IsLinkLocalUnicast() {
		return fmt.Errorf("IPv6 router address %v is not link-local", p.Router6)
	}
	if p.DNS6.IsValid() && (!unicast6(p.DNS6) || p.DNS6 == p.Gateway6 || p.DNS6 == p.Router6) {
		return fmt.Errorf("IPv6 DNS address %v is not a unicast IPv6 address other than the gateway's and the router's", p.DNS6)
	}
	if p.Guest6.IsValid() {
		if !unicast6(p.Guest6) || !n.Contains(p.Guest6) || p.Guest6 == n.Addr() || p.IsOwn(p.Guest6) {
			return fmt.Errorf("IPv6 guest %v is not a host address in %v other than the stack's", p.Guest6, n)
		}
	}
	return nil
}

// onLink reports whether the guest finds a on its link other than in
// Net4 or Net6: in the network of one of its other addresses, or through
// a route without a gateway (pasta copies the host's gateway and routes
// with -a: the gateway need not be in the guest's network).
func (p Plan) onLink(a netip.Addr) bool {
	for _, q := range append(p.Addrs4[:len(p.Addrs4):len(p.Addrs4)], p.Addrs6...) {
		if q.Masked().Contains(a) && a != q.Masked().Addr() && a != q.Addr() {
			return true
		}
	}
	for _, r := range p.Routes {
		if !r.Gateway.IsValid() && r.Dst.Bits() > 0 && r.Dst.Contains(a) {
			return true
		}
	}
	return false
}

// unicast4 does not refuse loopback or multicast ranges: slirp4netns
// takes any --cidr, 127.0.0.0/8 and 224.0.0.0/4 included.
func unicast4(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func unicast6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.Zone() == "" && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback()
}

// add4 returns the IPv4 address n after a.
func add4(a netip.Addr, n uint32) netip.Addr { return netip.AddrFrom4(u32to4(u32(a) + n)) }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32to4(v uint32) [4]byte { return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
