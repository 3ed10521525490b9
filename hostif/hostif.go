// Package hostif finds the host's template interface the way pasta does:
// for each address family, the interface of the first default route in
// the main table (else of the first route at all), its address with the
// longest prefix and the default route's gateway. A pasta-style front end
// copies them into the namespace so that it sees the host's own
// addresses.
//
// It also lists what pasta's --config-net copies: every address of the
// template interface and every main-table route through it.
//
// It reads netlink only and owns nothing. It must not import gVisor or
// any usernet package but netplan, whose Route it fills.
package hostif

import (
	"fmt"
	"net/netip"

	"github.com/usernet/usernet/netplan"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Family is one address family's template: invalid fields mean the host
// has none (no route, no address, no gateway).
type Family struct {
	Ifname  string
	Ifindex int
	MTU     int
	// Addr is the interface's address with the longest prefix, masked
	// prefix length kept (198.51.100.10/24).
	Addr netip.Prefix
	// Gateway is the default route's next hop (may be link-local for
	// IPv6).
	Gateway netip.Addr
	// LinkLocal is the interface's IPv6 link-local address.
	LinkLocal netip.Addr
	// Addrs are the interface's addresses of this family that are not
	// link-local nor deprecated, with their prefixes, in the kernel's
	// order (Addr among them).
	Addrs []netip.Prefix
	// NoBroadcast says Addr has no broadcast address (IPv4).
	NoBroadcast bool
	// Routes are the main table's routes of this family out of the
	// interface, in the kernel's order, without their preferred source
	// (the namespace's addresses may differ). Multipath routes are left
	// out, as pasta leaves out routes with a nexthop elsewhere.
	Routes []netplan.Route
}

// Template is the host's template for both families.
type Template struct {
	V4, V6 Family
}

// Find reads the template from the host's routing table, or from the
// interface named ifname when it is not empty (pasta's -i).
func Find(ifname string) (Template, error) {
	var t Template
	var err error
	if t.V4, err = find(netlink.FAMILY_V4, ifname); err != nil {
		return t, fmt.Errorf("IPv4 template interface: %w", err)
	}
	if t.V6, err = find(netlink.FAMILY_V6, ifname); err != nil {
		return t, fmt.Errorf("IPv6 template interface: %w", err)
	}
	return t, nil
}

func find(family int, ifname string) (Family, error) {
	var f Family
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return f, fmt.Errorf("list routes: %w", err)
	}
	var link netlink.Link
	if ifname != "" {
		if link, err = netlink.LinkByName(ifname); err != nil {
			return f, fmt.Errorf("interface %s: %w", ifname, err)
		}
	}
	idx, gw := pick(routes, link)
	if idx == 0 {
		return f, nil
	}
	if link == nil {
		if link, err = netlink.LinkByIndex(idx); err != nil {
			return f, fmt.Errorf("interface %d: %w", idx, err)
		}
	}
	f.Ifname, f.Ifindex, f.MTU, f.Gateway = link.Attrs().Name, idx, link.Attrs().MTU, gw
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		return f, fmt.Errorf("addresses of %s: %w", f.Ifname, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		ip = ip.Unmap()
		bits, _ := a.Mask.Size()
		switch {
		case ip.IsLinkLocalUnicast():
			if ip.Is6() && !f.LinkLocal.IsValid() {
				f.LinkLocal = ip
			}
			continue
		case a.Flags&unix.IFA_F_DEPRECATED != 0, ip.Is6() && a.Scope != unix.RT_SCOPE_UNIVERSE:
			continue
		}
		p := netip.PrefixFrom(ip, bits)
		f.Addrs = append(f.Addrs, p)
		if !f.Addr.IsValid() || bits > f.Addr.Bits() {
			f.Addr, f.NoBroadcast = p, ip.Is4() && a.Broadcast == nil
		}
	}
	for _, r := range routes {
		if r.LinkIndex != idx || len(r.MultiPath) > 0 {
			continue
		}
		f.Routes = append(f.Routes, copyRoute(r, family))
	}
	return f, nil
}

// copyRoute turns one of the host's routes into the plan's terms.
func copyRoute(r netlink.Route, family int) netplan.Route {
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if family == netlink.FAMILY_V6 {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	if r.Dst != nil {
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			bits, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(a.Unmap(), bits)
		}
	}
	gw, _ := netip.AddrFromSlice(r.Gw)
	return netplan.Route{
		Dst: dst, Gateway: gw.Unmap(), Metric: r.Priority,
		Protocol: int(r.Protocol), Scope: int(r.Scope), Type: r.Type, Flags: r.Flags,
	}
}

// pick returns the interface index and gateway of the first default route
// (on link, when given), else the index of the first route at all; 0 when
// there is none. Routes through lo and to link-local destinations do not
// count, as for pasta.
func pick(routes []netlink.Route, link netlink.Link) (int, netip.Addr) {
	first := 0
	for _, r := range routes {
		idx := r.LinkIndex
		gw := r.Gw
		if idx == 0 && len(r.MultiPath) > 0 {
			idx, gw = r.MultiPath[0].LinkIndex, r.MultiPath[0].Gw
		}
		if idx <= 1 || (link != nil && idx != link.Attrs().Index) {
			continue
		}
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue
		}
		ones := 0
		if r.Dst != nil {
			ones, _ = r.Dst.Mask.Size()
		}
		if ones == 0 {
			g, _ := netip.AddrFromSlice(gw)
			return idx, g.Unmap()
		}
		if first == 0 {
			first = idx
		}
	}
	return first, netip.Addr{}
}
