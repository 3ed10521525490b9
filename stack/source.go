package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Guest source addresses. The stack runs spoofing (any source is accepted
// and answered), so without a check a guest could fill every table from
// addresses that are not its own and make us dial the host on their
// behalf. The link filter drops, and counts (SpoofedSource), every IP
// frame whose source is outside the virtual network: the plan's networks
// (on a mirrored plan, the host's own, whose address the guest has),
// link-local, the unspecified address (DHCP, duplicate address detection)
// and the prefixes the user routes through the namespace
// (Limits.AllowSources). pasta checks nothing and answers senders behind
// the namespace (learnSender); its front end turns the check off
// (Limits.AnySource) unless --allow-source is given.

var (
	linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// sourcePrefixes returns the prefixes a guest may send from, by family.
func sourcePrefixes(c *Config) (v4, v6 []netip.Prefix) {
	plan := &c.Plan
	v4 = append(v4, plan.Net4, linkLocal4)
	if plan.Guest4.IsValid() && !plan.Net4.Contains(plan.Guest4) {
		v4 = append(v4, netip.PrefixFrom(plan.Guest4, 32))
	}
	v6 = append(v6, linkLocal6)
	if plan.Net6.IsValid() {
		v6 = append(v6, plan.Net6)
	}
	if plan.Guest6.IsValid() && !plan.Net6.Contains(plan.Guest6) {
		v6 = append(v6, netip.PrefixFrom(plan.Guest6, 128))
	}
	// Every network of the guest's addresses (pasta's --config-net copies
	// all of the template's).
	v4 = append(v4, maskedAll(plan.GuestAddrs(false))...)
	v6 = append(v6, maskedAll(plan.GuestAddrs(true))...)
	for _, p := range c.Limits.AllowSources {
		p = p.Masked()
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

func maskedAll(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	return out
}

// sourceAllowed reports whether the guest may send from a.
func (s *Stack) sourceAllowed(a netip.Addr) bool {
	if a.IsUnspecified() {
		return true
	}
	list := s.sources4
	if a.Is6() {
		list = s.sources6
	}
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// spoofed counts and reports a frame from a source the guest may not use.
func (s *Stack) spoofed(a netip.Addr) bool {
	if s.cfg.Limits.AnySource || s.sourceAllowed(a) {
		return false
	}
	s.refuse(SpoofedSource, 1)
	return true
}

// IPv6 extension headers that the link filter walks to find the upper
// layer (RFC 8200's order; others, e.g. ESP, end the walk).
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

// ipv6Upper walks the extension headers of an IPv6 packet (b, from the
// fixed header on) and returns the protocol after them, and whether the
// packet is a fragment. For a fragment other than the first, the protocol
// is the fragment header's next header, which may be another extension
// header. ok is false if b ends before the walk does.
func ipv6Upper(b []byte) (proto uint8, fragment, ok bool) {
	off := header.IPv6MinimumSize
	proto = header.IPv6(b).NextHeader()
	for range 8 {
		switch proto {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if len(b) < off+2 {
				return proto, fragment, false
			}
			proto, off = b[off], off+(int(b[off+1])+1)*8
		case ipv6Fragment:
			if len(b) < off+8 {
				return proto, fragment, false
			}
			fragment = true
			proto = b[off]
			if binary.BigEndian.Uint16(b[off+2:])>>3 != 0 { // not the first fragment
				return proto, fragment, true
			}
			off += 8
		default:
			return proto, fragment, true
		}
	}
	return proto, fragment, false
}
