package hostif

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

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
