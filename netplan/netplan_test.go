package netplan

import (
	"net/netip"
	"strings"
	"testing"
)

var (
	a = netip.MustParseAddr
	p = netip.MustParsePrefix
)

func mustSlirp(t *testing.T, cidr string, ipv6 bool) Plan {
	t.Helper()
	pl, err := Slirp(p(cidr), ipv6)
	if err != nil {
		t.Fatalf("Slirp(%s, %v): %v", cidr, ipv6, err)
	}
	return pl
}

func TestSlirp(t *testing.T) {
	for _, tt := range []struct {
		cidr                                            string
		guest, gw, dns, dhcpStart, dhcpEnd, mask, bcast string
	}{
		{"10.0.2.0/24", "10.0.2.100", "10.0.2.2", "10.0.2.3", "10.0.2.15", "10.0.2.30", "255.255.255.0", "10.0.2.255"},
		// rootlesskit's default.
		{"10.0.135.128/25", "10.0.135.228", "10.0.135.130", "10.0.135.131", "10.0.135.143", "10.0.135.158", "255.255.255.128", "10.0.135.255"},
		// The carry crosses octets.
		{"192.168.0.0/16", "192.168.0.100", "192.168.0.2", "192.168.0.3", "192.168.0.15", "192.168.0.30", "255.255.0.0", "192.168.255.255"},
		{"128.0.0.0/1", "128.0.0.100", "128.0.0.2", "128.0.0.3", "128.0.0.15", "128.0.0.30", "128.0.0.0", "255.255.255.255"},
	} {
		pl := mustSlirp(t, tt.cidr, false)
		got := []netip.Addr{pl.Guest4, pl.Gateway4, pl.DNS4, pl.DHCPStart4, pl.DHCPEnd4(), pl.Netmask4(), pl.Broadcast4()}
		want := []string{tt.guest, tt.gw, tt.dns, tt.dhcpStart, tt.dhcpEnd, tt.mask, tt.bcast}
		for i := range got {
			if got[i].String() != want[i] {
				t.Errorf("Slirp(%s): guest, gateway, DNS, DHCP start, end, mask, broadcast = %v; want %v", tt.cidr, got, want)
				break
			}
		}
		if pl.Net4 != p(tt.cidr) || pl.DHCPSize != 16 {
			t.Errorf("Slirp(%s): Net4 %v, DHCPSize %d", tt.cidr, pl.Net4, pl.DHCPSize)
		}
		if pl.IPv6() || pl.Net6.IsValid() || pl.Gateway6.IsValid() || pl.DNS6.IsValid() || pl.Router6.IsValid() || pl.Guest6.IsValid() {
			t.Errorf("Slirp(%s, false) has IPv6: %+v", tt.cidr, pl)
		}
	}
}

func TestSlirpIPv6(t *testing.T) {
	pl := mustSlirp(t, "10.0.2.0/24", true)
	if !pl.IPv6() || pl.Net6 != p("fd00::/64") || pl.Gateway6 != a("fd00::2") || pl.DNS6 != a("fd00::3") || pl.Router6 != a("fe80::2") {
		t.Errorf("Slirp(10.0.2.0/24, true) IPv6 = %v %v %v %v", pl.Net6, pl.Gateway6, pl.DNS6, pl.Router6)
	}
	if pl.Guest6.IsValid() {
		t.Errorf("Slirp: Guest6 = %v; want invalid (SLAAC)", pl.Guest6)
	}
}

// TestSlirpAnyNetwork: every --cidr slirp4netns takes gives a valid plan,
// odd ranges included.
func TestSlirpAnyNetwork(t *testing.T) {
	for bits := 1; bits <= 25; bits++ {
		for _, n := range []string{"0.0.0.0", "10.0.0.0", "127.0.0.0", "224.0.0.0", "255.255.255.128"} {
			cidr := netip.PrefixFrom(a(n), bits).Masked()
			if _, err := Slirp(cidr, true); err != nil {
				t.Errorf("Slirp(%v) = %v", cidr, err)
			}
		}
	}
}

// TestSlirpErrors pins slirp4netns's texts, which the command line prints.
func TestSlirpErrors(t *testing.T) {
	for _, tt := range []struct {
		cidr netip.Prefix
		want string
	}{
		{p("fd00::/64"), "invalid CIDR: fd00::/64"},
		{p("::ffff:10.0.2.0/120"), "invalid CIDR: ::ffff:10.0.2.0/120"},
		{netip.Prefix{}, "invalid CIDR: invalid Prefix"},
		{p("10.0.0.0/26"), "prefix length needs to be 1-25"},
		{p("10.0.0.0/32"), "prefix length needs to be 1-25"},
		{p("0.0.0.0/0"), "prefix length needs to be 1-25"},
		{p("10.0.2.100/24"), "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"},
		{p("10.0.135.0/23"), "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"},
	} {
		if _, err := Slirp(tt.cidr, false); err == nil || err.Error() != tt.want {
			t.Errorf("Slirp(%v) = %v; want %q", tt.cidr, err, tt.want)
		}
	}
}

func TestIsOwnContains(t *testing.T) {
	v4 := mustSlirp(t, "10.0.2.0/24", false)
	v6 := mustSlirp(t, "10.0.2.0/24", true)
	for _, tt := range []struct {
		addr             string
		own4, own6       bool
		inside4, inside6 bool
	}{
		{"10.0.2.2", true, true, true, true},
		{"10.0.2.3", true, true, true, true},
		{"10.0.2.100", false, false, true, true},
		{"10.0.2.255", false, false, true, true},
		{"10.0.3.1", false, false, false, false},
		{"fd00::2", false, true, false, true},
		{"fd00::3", false, true, false, true},
		{"fe80::2", false, true, false, false},
		{"fd00::1234", false, false, false, true},
		{"fd00:1::2", false, false, false, false},
	} {
		x := a(tt.addr)
		if v4.IsOwn(x) != tt.own4 || v6.IsOwn(x) != tt.own6 {
			t.Errorf("IsOwn(%v) = %v (IPv4 only), %v (with IPv6); want %v, %v", x, v4.IsOwn(x), v6.IsOwn(x), tt.own4, tt.own6)
		}
		if v4.Contains(x) != tt.inside4 || v6.Contains(x) != tt.inside6 {
			t.Errorf("Contains(%v) = %v (IPv4 only), %v (with IPv6); want %v, %v", x, v4.Contains(x), v6.Contains(x), tt.inside4, tt.inside6)
		}
	}
	if v6.IsOwn(netip.Addr{}) || (Plan{}).IsOwn(netip.Addr{}) || (Plan{}).Contains(a("10.0.2.2")) {
		t.Errorf("the invalid address, or the zero Plan, owns or contains something")
	}
}

func TestZeroPlanHelpers(t *testing.T) {
	var z Plan
	if z.Broadcast4().IsValid() || z.Netmask4().IsValid() || z.DHCPEnd4().IsValid() || z.IPv6() {
		t.Errorf("zero Plan: Broadcast4 %v, Netmask4 %v, DHCPEnd4 %v, IPv6 %v; want all invalid, false",
			z.Broadcast4(), z.Netmask4(), z.DHCPEnd4(), z.IPv6())
	}
}

// TestValidatePasta: a plan as pasta builds it (the host's address and
// gateway, a DNS address outside the network, a one-address pool) is valid.
func TestValidatePasta(t *testing.T) {
	pl := Plan{
		Net4:       p("192.168.1.0/24"),
		Guest4:     a("192.168.1.57"),
		Gateway4:   a("192.168.1.1"),
		DNS4:       a("169.254.1.1"),
		DHCPStart4: a("192.168.1.57"),
		DHCPSize:   1,
		Net6:       p("2001:db8:1::/64"),
		Guest6:     a("2001:db8:1::57"),
		Gateway6:   a("2001:db8:1::1"),
		DNS6:       a("fe80::1"),
		Router6:    a("fe80::2"),
	}
	if err := pl.Validate(); err != nil {
		t.Fatalf("Validate(pasta-like plan) = %v", err)
	}
	if !pl.IsOwn(a("169.254.1.1")) || pl.Contains(a("169.254.1.1")) {
		t.Errorf("DNS outside the network: IsOwn %v, Contains %v; want true, false", pl.IsOwn(a("169.254.1.1")), pl.Contains(a("169.254.1.1")))
	}
}

func TestValidate(t *testing.T) {
	base := func() Plan {
		pl, err := Slirp(p("10.0.2.0/24"), true)
		if err != nil {
			t.Fatal(err)
		}
		return pl
	}
	for _, tt := range []struct {
		name   string
		change func(*Plan)
		want   string // in the error; "" = valid
	}{
		{"slirp4netns", func(*Plan) {}, ""},
		{"static IPv6 guest", func(p *Plan) { p.Guest6 = a("fd00::100") }, ""},
		{"guest in the pool", func(p *Plan) { p.Guest4 = a("10.0.2.15") }, ""},
		{"no DNS address", func(p *Plan) { p.DNS4, p.DNS6 = netip.Addr{}, netip.Addr{} }, ""},
		{"mirrored, link-local IPv6 gateway", func(p *Plan) { p.Mirror, p.Gateway6, p.Router6 = true, a("fe80::1"), a("fe80::1") }, ""},
		{"link-local IPv6 gateway", func(p *Plan) { p.Gateway6, p.Router6 = a("fe80::1"), a("fe80::1") }, ""},
		{"zero", func(p *Plan) { *p = Plan{} }, "IPv4 network"},
		{"IPv6 network as IPv4", func(p *Plan) { p.Net4 = p.Net6 }, "IPv4 network"},
		{"/31", func(p *Plan) { p.Net4 = netip.MustParsePrefix("10.0.2.0/31") }, "IPv4 network"},
		{"not masked", func(p *Plan) { p.Net4 = netip.MustParsePrefix("10.0.2.1/24") }, "not a network address"},
		{"gateway outside", func(p *Plan) { p.Gateway4 = a("10.0.3.2") }, "gateway"},
		{"gateway is the network address", func(p *Plan) { p.Gateway4 = a("10.0.2.0") }, "gateway"},
		{"guest invalid", func(p *Plan) { p.Guest4 = netip.Addr{} }, "guest"},
		{"guest is broadcast", func(p *Plan) { p.Guest4 = a("10.0.2.255") }, "guest"},
		{"guest IPv6", func(p *Plan) { p.Guest4 = a("fd00::100") }, "guest"},
		{"guest is the gateway", func(p *Plan) { p.Guest4 = p.Gateway4 }, "is the gateway"},
		{"DNS unspecified", func(p *Plan) { p.DNS4 = a("0.0.0.0") }, "DNS address"},
		{"DNS broadcast", func(p *Plan) { p.DNS4 = a("255.255.255.255") }, "DNS address"},
		{"DNS is the gateway", func(p *Plan) { p.DNS4 = p.Gateway4 }, "DNS address"},
		{"DNS is the guest", func(p *Plan) { p.DNS4 = p.Guest4 }, "DNS address"},
		{"no pool", func(p *Plan) { p.DHCPSize = 0 }, "DHCP pool"},
		{"pool outside", func(p *Plan) { p.DHCPStart4 = a("10.0.3.15") }, "DHCP pool"},
		{"pool past broadcast", func(p *Plan) { p.DHCPStart4 = a("10.0.2.250") }, "DHCP pool"},
		{"pool holds the gateway", func(p *Plan) { p.DHCPStart4 = a("10.0.2.1") }, "DHCP pool"},
		{"IPv6 fields without a network", func(p *Plan) { p.Net6 = netip.Prefix{} }, "without an IPv6 network"},
		{"IPv4 as IPv6 network", func(p *Plan) { p.Net6 = p.Net4 }, "IPv6 network"},
		{"IPv6 network not masked", func(p *Plan) { p.Net6 = netip.MustParsePrefix("fd00::1/64") }, "IPv6 network"},
		{"IPv6 gateway outside", func(p *Plan) { p.Gateway6 = a("fd01::2") }, "IPv6 gateway"},
		{"IPv6 gateway missing", func(p *Plan) { p.Gateway6 = netip.Addr{} }, "IPv6 gateway"},
		{"router not link-local", func(p *Plan) { p.Router6 = a("fd00::4") }, "router"},
		{"IPv6 DNS is the gateway", func(p *Plan) { p.DNS6 = p.Gateway6 }, "IPv6 DNS"},
		{"IPv6 DNS is the router", func(p *Plan) { p.DNS6 = p.Router6 }, "IPv6 DNS"},
		{"IPv6 DNS is IPv4", func(p *Plan) { p.DNS6 = a("10.0.2.3") }, "IPv6 DNS"},
		{"IPv6 guest is the DNS", func(p *Plan) { p.Guest6 = p.DNS6 }, "IPv6 guest"},
		{"IPv6 guest outside", func(p *Plan) { p.Guest6 = a("2001:db8::100") }, "IPv6 guest"},
	} {
		pl := base()
		tt.change(&pl)
		err := pl.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: Validate = %v; want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "netplan: ")):
			t.Errorf("%s: Validate = %v; want a netplan error about %q", tt.name, err, tt.want)
		}
	}
}

func TestVirtual(t *testing.T) {
	slirp, err := Slirp(netip.MustParsePrefix("10.0.2.0/24"), true)
	if err != nil {
		t.Fatal(err)
	}
	mirror := Plan{
		Net4: netip.MustParsePrefix("198.51.100.0/24"), Guest4: netip.MustParseAddr("198.51.100.10"),
		Gateway4: netip.MustParseAddr("198.51.100.1"), DNS4: netip.MustParseAddr("169.254.1.1"),
		DHCPStart4: netip.MustParseAddr("198.51.100.10"), DHCPSize: 1, Mirror: true,
	}
	if err := mirror.Validate(); err != nil {
		t.Fatalf("mirror plan: %v", err)
	}
	// rootlesskit's -a on a virtual IPv4 network, the host's IPv6 one copied.
	mixed := slirp
	mixed.Net6, mixed.Guest6, mixed.Gateway6 = netip.MustParsePrefix("2001:db8::/64"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::254")
	mixed.DNS6, mixed.HostLoopback6, mixed.Mirror6 = netip.Addr{}, netip.Addr{}, true
	if err := mixed.Validate(); err != nil {
		t.Fatalf("mixed plan: %v", err)
	}
	for _, tc := range []struct {
		p    Plan
		a    string
		want bool
	}{
		{mixed, "10.0.2.50", true},
		{mixed, "2001:db8::77", false},
		{mixed, "2001:db8::1", true},
		{slirp, "10.0.2.50", true},
		{slirp, "10.0.2.100", true},
		{slirp, "fd00::50", true},
		{slirp, "198.51.100.1", false},
		{mirror, "198.51.100.10", true}, // the guest's own
		{mirror, "198.51.100.1", false}, // the real router
		{mirror, "198.51.100.77", false},
		{mirror, "169.254.1.1", false},
	} {
		if got := tc.p.Virtual(netip.MustParseAddr(tc.a)); got != tc.want {
			t.Errorf("Virtual(%s) with Mirror=%v = %v, want %v", tc.a, tc.p.Mirror, got, tc.want)
		}
	}
	if slirp.HostLoopback4 != slirp.Gateway4 || slirp.HostLoopback6 != slirp.Gateway6 {
		t.Errorf("slirp4netns plan maps the host loopback at %v, %v; want the gateways", slirp.HostLoopback4, slirp.HostLoopback6)
	}
}
