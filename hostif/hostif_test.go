package hostif

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/usernet/usernet/netplan"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNewNetns runs f on a thread of its own in a new network namespace
// (root only), where it can make interfaces without touching the host's.
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare(CLONE_NEWNET): %v", err)
			return
		}
		f()
	}()
	<-done
}

func mustPrefix(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func TestFindCopiesDefaultRouteInterface(t *testing.T) {
	inNewNetns(t, func() {
		mk := func(name string, mtu int) netlink.Link {
			// A veth pair with both ends up: its routes are not linkdown.
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "p"}); err != nil {
				t.Fatalf("add %s: %v", name, err)
			}
			var l netlink.Link
			for _, n := range []string{name + "p", name} {
				var err error
				if l, err = netlink.LinkByName(n); err != nil {
					t.Fatal(err)
				}
				if err := netlink.LinkSetUp(l); err != nil {
					t.Fatal(err)
				}
			}
			return l
		}
		other := mk("other0", 1500)
		up := mk("uplink0", 9000)
		for _, a := range []struct {
			l    netlink.Link
			addr string
		}{
			{other, "192.0.2.5/24"},
			{up, "198.51.100.10/24"},
			{up, "198.51.100.11/28"}, // longest prefix wins
			{up, "2001:db8::10/64"},
		} {
			if err := netlink.AddrAdd(a.l, &netlink.Addr{IPNet: mustPrefix(a.addr), Flags: unix.IFA_F_NODAD}); err != nil {
				t.Fatalf("add %s: %v", a.addr, err)
			}
		}
		for _, r := range []*netlink.Route{
			{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("198.51.100.1")},
			{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("2001:db8::1")},
		} {
			if err := netlink.RouteAdd(r); err != nil {
				t.Fatalf("add route via %v: %v", r.Gw, err)
			}
		}
		got, err := Find("")
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		if got.V4.Ifname != "uplink0" || got.V4.MTU != 9000 || got.V4.Addr.String() != "198.51.100.11/28" || got.V4.Gateway.String() != "198.51.100.1" {
			t.Errorf("IPv4 template = %+v; want uplink0, MTU 9000, 198.51.100.11/28 via 198.51.100.1", got.V4)
		}
		if got.V6.Ifname != "uplink0" || got.V6.Addr.String() != "2001:db8::10/64" || got.V6.Gateway.String() != "2001:db8::1" || !got.V6.LinkLocal.IsLinkLocalUnicast() {
			t.Errorf("IPv6 template = %+v; want uplink0, 2001:db8::10/64 via 2001:db8::1, with a link-local address", got.V6)
		}
		named, err := Find("other0")
		if err != nil {
			t.Fatalf("Find(other0): %v", err)
		}
		if named.V4.Addr.String() != "192.0.2.5/24" || named.V4.Gateway.IsValid() {
			t.Errorf("template other0 = %+v; want 192.0.2.5/24 without a gateway", named.V4)
		}
	})
}

func TestFindWithoutRoutes(t *testing.T) {
	inNewNetns(t, func() {
		got, err := Find("")
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		if got.V4.Ifname != "" || got.V6.Ifname != "" {
			t.Errorf("template in an empty namespace = %+v, want none", got)
		}
	})
}

// TestFindListsAddrsAndRoutes: what --config-net copies, every address
// and every main-table route of the template interface, and nothing of
// another interface's.
func TestFindListsAddrsAndRoutes(t *testing.T) {
	inNewNetns(t, func() {
		var up, other netlink.Link
		for _, p := range []struct {
			name string
			l    *netlink.Link
		}{{"uplink0", &up}, {"other0", &other}} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.name}, PeerName: p.name + "p"}); err != nil {
				t.Fatalf("add %s: %v", p.name, err)
			}
			for _, n := range []string{p.name + "p", p.name} {
				l, err := netlink.LinkByName(n)
				if err != nil {
					t.Fatal(err)
				}
				if err := netlink.LinkSetUp(l); err != nil {
					t.Fatal(err)
				}
				*p.l = l
			}
		}
		for _, a := range []struct {
			l          netlink.Link
			addr       string
			deprecated bool
		}{
			{up, "198.51.100.10/24", false},
			{up, "203.0.113.5/25", false},
			{up, "192.0.2.9/24", true}, // left out
			{up, "2001:db8::10/64", false},
			{up, "2001:db8:5::10/64", false},
			{other, "192.0.2.5/24", false},
		} {
			na := &netlink.Addr{IPNet: mustPrefix(a.addr), Flags: unix.IFA_F_NODAD}
			if na.IP.To4() != nil {
				na.Broadcast = net.IPv4zero // none, as `ip addr add` without brd
			}
			if a.deprecated {
				na.ValidLft, na.PreferedLft = 3600, 0
			}
			if err := netlink.AddrAdd(a.l, na); err != nil {
				t.Fatalf("add %s: %v", a.addr, err)
			}
		}
		idx := up.Attrs().Index
		for _, r := range []*netlink.Route{
			{LinkIndex: idx, Gw: net.ParseIP("198.51.100.1")},
			{LinkIndex: idx, Dst: mustPrefix("10.9.0.0/16"), Gw: net.ParseIP("198.51.100.253"), Priority: 7},
			{LinkIndex: idx, Dst: mustPrefix("10.8.0.0/16"), Scope: netlink.SCOPE_LINK},
			{LinkIndex: idx, Dst: mustPrefix("10.7.0.0/16"), Gw: net.ParseIP("192.0.2.77"), Flags: int(netlink.FLAG_ONLINK)},
			{LinkIndex: other.Attrs().Index, Dst: mustPrefix("10.6.0.0/16"), Gw: net.ParseIP("192.0.2.1")},
			{LinkIndex: idx, Gw: net.ParseIP("2001:db8::1")},
			{LinkIndex: idx, Dst: mustPrefix("2001:db8:9::/48"), Gw: net.ParseIP("2001:db8::253")},
		} {
			if err := netlink.RouteAdd(r); err != nil {
				t.Fatalf("add route %v: %v", r, err)
			}
		}
		got, err := Find("")
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		if want := "[198.51.100.10/24 203.0.113.5/25]"; fmt.Sprint(got.V4.Addrs) != want {
			t.Errorf("IPv4 addresses = %v, want %s", got.V4.Addrs, want)
		}
		if !got.V4.NoBroadcast {
			t.Errorf("IPv4 template has a broadcast address; it was added without one")
		}
		// The kernel lists IPv6 addresses newest first.
		if want := "[2001:db8:5::10/64 2001:db8::10/64]"; fmt.Sprint(got.V6.Addrs) != want {
			t.Errorf("IPv6 addresses = %v, want %s", got.V6.Addrs, want)
		}
		routes := func(rs []netplan.Route) string {
			var s []string
			for _, r := range rs {
				s = append(s, fmt.Sprintf("%v via %v metric %d proto %d scope %d flags %d", r.Dst, r.Gateway, r.Metric, r.Protocol, r.Scope, r.Flags))
			}
			return strings.Join(s, "\n")
		}
		want4 := strings.Join([]string{
			"0.0.0.0/0 via 198.51.100.1 metric 0 proto 3 scope 0 flags 0",
			"10.7.0.0/16 via 192.0.2.77 metric 0 proto 3 scope 0 flags 4",
			"10.8.0.0/16 via invalid IP metric 0 proto 3 scope 253 flags 0",
			"10.9.0.0/16 via 198.51.100.253 metric 7 proto 3 scope 0 flags 0",
			"192.0.2.0/24 via invalid IP metric 0 proto 2 scope 253 flags 0", // the deprecated address's
			"198.51.100.0/24 via invalid IP metric 0 proto 2 scope 253 flags 0",
			"203.0.113.0/25 via invalid IP metric 0 proto 2 scope 253 flags 0",
		}, "\n")
		if g := routes(got.V4.Routes); g != want4 {
			t.Errorf("IPv4 routes:\n%s\nwant:\n%s", g, want4)
		}
		g6 := routes(got.V6.Routes)
		for _, w := range []string{
			"::/0 via 2001:db8::1 metric 1024 proto 3",
			"2001:db8:9::/48 via 2001:db8::253 metric 1024 proto 3",
			"2001:db8::/64 via invalid IP metric 256 proto 2",
			"2001:db8:5::/64 via invalid IP metric 256 proto 2",
		} {
			if !strings.Contains(g6, w) {
				t.Errorf("IPv6 routes:\n%s\nlack %q", g6, w)
			}
		}
	})
}
