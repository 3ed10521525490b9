package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/hostif"
)

// hostTemplate is a host on 198.51.100.10/24 via .1, with IPv6.
var hostTemplate = hostif.Template{
	V4: hostif.Family{Ifname: "eth0", Ifindex: 2, MTU: 1500, Addr: netip.MustParsePrefix("198.51.100.10/24"), Gateway: netip.MustParseAddr("198.51.100.1")},
	V6: hostif.Family{Ifname: "eth0", Ifindex: 2, MTU: 1500, Addr: netip.MustParsePrefix("2001:db8::10/64"),
		Gateway: netip.MustParseAddr("fe80::1"), LinkLocal: netip.MustParseAddr("fe80::5054:ff:fe12:3456")},
}

func parsePasta(t *testing.T, args string) (*options, bool) {
	t.Helper()
	po, err := pasta.Parse("pasta", strings.Fields(args), pasta.WithExtra(pastaExtra()...))
	if err != nil {
		t.Fatalf("pasta.Parse(%q): %v", args, err)
	}
	o, tg, err := pastaOptions(po, hostTemplate)
	if err != nil {
		t.Fatalf("pastaOptions(%q): %v", args, err)
	}
	return o, tg.PID != 0
}

// What Podman 5.4 passes by default: the host's addresses copied, DNS at
// 169.254.1.1, the host's own address at 169.254.1.2, no loopback
// mapping, no forwards.
func TestPastaOptionsPodman(t *testing.T) {
	po, err := pasta.Parse("pasta", strings.Fields("--config-net -t 8080-8080:80-80 -u 127.0.0.1/5353-5353:53-53 --dns-forward 169.254.1.1 -T none -U none --no-map-gw --quiet --netns /run/user/1000/netns/netns-1 --map-guest-addr 169.254.1.2"))
	if err != nil {
		t.Fatal(err)
	}
	o, tg, err := pastaOptions(po, hostTemplate)
	if err != nil {
		t.Fatal(err)
	}
	p := o.plan
	for _, c := range []struct{ what, got, want string }{
		{"guest", p.Guest4.String(), "198.51.100.10"},
		{"network", p.Net4.String(), "198.51.100.0/24"},
		{"gateway", p.Gateway4.String(), "198.51.100.1"},
		{"DNS", p.DNS4.String(), "169.254.1.1"},
		{"guest alias", p.GuestAlias4.String(), "169.254.1.2"},
		{"host loopback (--no-map-gw)", p.HostLoopback4.String(), "invalid IP"},
		{"guest6", p.Guest6.String(), "2001:db8::10"},
		{"gateway6", p.Gateway6.String(), "fe80::1"},
		{"router6", p.Router6.String(), "fe80::1"},
		{"tap", o.tapName, "eth0"},
		{"netns", tg.NetnsPath, "/run/user/1000/netns/netns-1"},
		{"userns", tg.UsernsPath, ""},
	} {
		if c.got != c.want {
			t.Errorf("%s = %s, want %s", c.what, c.got, c.want)
		}
	}
	if p.HostAddr4.String() != "198.51.100.10" {
		t.Errorf("host address (for the guest alias) = %v, want 198.51.100.10", p.HostAddr4)
	}
	if !p.Mirror || !o.configure || o.disableDNS || o.autoTCP || o.autoUDP || !o.disableRA {
		t.Errorf("mirror %v, configure %v, disableDNS %v, auto %v/%v, disableRA %v; want true, true, false, false/false, true",
			p.Mirror, o.configure, o.disableDNS, o.autoTCP, o.autoUDP, o.disableRA)
	}
	var rules []string
	for _, r := range o.publish {
		rules = append(rules, r.String())
	}
	want := []string{"tcp 0.0.0.0:8080 -> *:80", "tcp [::]:8080 -> *:80", "udp 127.0.0.1:5353 -> *:53"}
	if !slices.Equal(rules, want) {
		t.Errorf("forwards %q, want %q", rules, want)
	}
}

// What rootlesskit 2.0 passes: its own addresses, IPv4 only, auto ports.
func TestPastaOptionsRootlesskit(t *testing.T) {
	o, byPID := parsePasta(t, "--stderr --ns-ifname=tap0 --mtu=65520 --no-dhcp --no-ra --address=10.0.2.100 --netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --ipv4-only --tcp-ports=auto --udp-ports=auto 4242")
	p := o.plan
	if p.Guest4.String() != "10.0.2.100" || p.Net4.String() != "10.0.2.0/24" || p.Gateway4.String() != "10.0.2.2" ||
		p.DNS4.String() != "10.0.2.3" || p.HostLoopback4.String() != "10.0.2.2" || p.IPv6() || p.Mirror {
		t.Errorf("plan %+v; want 10.0.2.100/24 via .2, DNS .3, .2 → host loopback, no IPv6", p)
	}
	if !byPID || o.tapName != "tap0" || o.mtu != 65520 || !o.autoTCP || !o.autoUDP || !o.disableDHCP || o.configure {
		t.Errorf("PID %v, tap %q, mtu %d, auto %v/%v, disableDHCP %v, configure %v", byPID, o.tapName, o.mtu, o.autoTCP, o.autoUDP, o.disableDHCP, o.configure)
	}
}

// Without a template for IPv4, pasta's local mode.
func TestPastaPlanLocalMode(t *testing.T) {
	po, err := pasta.Parse("pasta", []string{"--config-net", "1"})
	if err != nil {
		t.Fatal(err)
	}
	o, _, err := pastaOptions(po, hostif.Template{})
	if err != nil {
		t.Fatal(err)
	}
	if o.plan.Guest4.String() != "169.254.2.1" || o.plan.Gateway4.String() != "169.254.2.2" || o.tapName != "tap0" || o.plan.IPv6() {
		t.Errorf("local mode plan %+v, tap %q; want 169.254.2.1/16 via .2.2 on tap0, no IPv6", o.plan, o.tapName)
	}
}

func TestPastaPcap(t *testing.T) {
	if o, _ := parsePasta(t, "-p /tmp/x.pcap 1"); o.pcap != "/tmp/x.pcap" {
		t.Errorf("-p /tmp/x.pcap: pcap %q", o.pcap)
	}
	if o, _ := parsePasta(t, "--pcap=/tmp/y.pcap 1"); o.pcap != "/tmp/y.pcap" {
		t.Errorf("--pcap=/tmp/y.pcap: pcap %q", o.pcap)
	}
}

func TestPastaUnsupportedOptions(t *testing.T) {
	for _, args := range []string{"-F 3 1"} {
		po, err := pasta.Parse("pasta", strings.Fields(args))
		if err != nil {
			t.Fatalf("pasta.Parse(%q): %v", args, err)
		}
		if _, _, err := pastaOptions(po, hostTemplate); err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("pastaOptions(%q) = %v, want a 'not supported' error", args, err)
		}
	}
}

// DHCPv6 is served unless --no-dhcpv6 or there is no IPv6 address; DNS
// and the search list are advertised only when asked for, as pasta does.
func TestPastaDHCPv6AndAdvertise(t *testing.T) {
	for _, c := range []struct {
		args           string
		dhcpv6         bool
		dns4, dns6, sl string
		hostname, fqdn string
	}{
		{args: "--dns-forward 169.254.1.1 1", dhcpv6: true},
		{args: "--no-dhcpv6 1"},
		{args: "-4 1"},
		{args: "--dhcp-dns --dns-forward 169.254.1.1 1", dhcpv6: true, dns4: "[169.254.1.1]", dns6: "[]"},
		{args: "--dhcp-dns --dns-forward 169.254.1.1 --dns-forward fd00::53 1", dhcpv6: true, dns4: "[169.254.1.1]", dns6: "[fd00::53]"},
		{args: "--dhcp-dns -D 192.0.2.53 -D 2001:db8::53 --dns-forward 169.254.1.1 1", dhcpv6: true, dns4: "[192.0.2.53]", dns6: "[2001:db8::53]"},
		{args: "--dhcp-dns -D none --dns-forward 169.254.1.1 1", dhcpv6: true, dns4: "[]", dns6: "[]"},
		{args: "-D 192.0.2.53 -S example.org -H h --fqdn h.example.org 1", dhcpv6: true, hostname: "h", fqdn: "h.example.org"},
		{args: "--dhcp-search -S example.org -S example.net 1", dhcpv6: true, sl: "[example.org example.net]"},
	} {
		o, _ := parsePasta(t, c.args)
		if o.dhcpv6 != c.dhcpv6 || o.hostname != c.hostname || o.fqdn != c.fqdn {
			t.Errorf("%s: dhcpv6 %v, hostname %q, fqdn %q; want %v, %q, %q", c.args, o.dhcpv6, o.hostname, o.fqdn, c.dhcpv6, c.hostname, c.fqdn)
		}
		a := o.advertise
		if a == nil {
			t.Fatalf("%s: advertise nil, want pasta's choice (never slirp4netns's default)", c.args)
		}
		str := func(v any, empty bool) string {
			if s := fmt.Sprint(v); s != "[]" || !empty {
				return s
			}
			return ""
		}
		if got := str(a.DNS4, c.dns4 == ""); got != c.dns4 {
			t.Errorf("%s: advertised DNS4 %s, want %s", c.args, got, c.dns4)
		}
		if got := str(a.DNS6, c.dns6 == ""); got != c.dns6 {
			t.Errorf("%s: advertised DNS6 %s, want %s", c.args, got, c.dns6)
		}
		if got := str(a.Search, c.sl == ""); got != c.sl {
			t.Errorf("%s: advertised search %s, want %s", c.args, got, c.sl)
		}
	}
}

// An exclusions-only spec: every port but those and the ephemeral ones,
// one dual-stack forward of them all per spec.
func TestPastaExclusionsOnly(t *testing.T) {
	for _, c := range []struct {
		args     string
		proto    string
		host     string
		excluded []uint16
	}{
		{"-t ~25 1", "tcp", "invalid IP", []uint16{25}},
		{"-u ~53,~5353 1", "udp", "invalid IP", []uint16{53, 5353}},
		{"-4 -t ~25 1", "tcp", "0.0.0.0", []uint16{25}},
		{"-t 127.0.0.1/~25 1", "tcp", "127.0.0.1", []uint16{25}},
	} {
		o, _ := parsePasta(t, c.args)
		if len(o.publishMany) != 1 || len(o.publish) != 0 {
			t.Errorf("%s: %d forwards of many ports, %d others; want 1, 0", c.args, len(o.publishMany), len(o.publish))
			continue
		}
		m := o.publishMany[0].many
		ports := map[uint16]uint16{}
		for _, p := range m.Ports {
			ports[p.Host] = p.Guest
		}
		want := 65535 - (60999 - 32768 + 1) - len(c.excluded)
		if m.Proto != c.proto || m.HostAddr.String() != c.host || len(m.Ports) != want || ports[80] != 80 || ports[65535] != 65535 {
			t.Errorf("%s: %s on %v, %d ports (80 → %d); want %s on %s, %d ports, 80 → 80", c.args, m.Proto, m.HostAddr, len(m.Ports), ports[80], c.proto, c.host, want)
		}
		for _, x := range append(c.excluded, 32768, 60999) {
			if _, ok := ports[x]; ok {
				t.Errorf("%s: port %d forwarded", c.args, x)
			}
		}
	}
}

func TestPastaRunAsParse(t *testing.T) {
	for _, c := range []struct {
		spec string
		want string
	}{
		{"1000", "1000:1000"},
		{"1000:100", "1000:100"},
		{"0x10:0", "16:0"},
		{"nobody", ""}, // looked up
		{"root", "error"},
		{"no-such-user-here", "error"},
		{"1000:no-such-group-here", "error"},
	} {
		r, err := parseRunAs(c.spec)
		got := "error"
		if err == nil {
			got = fmt.Sprintf("%d:%d", r.UID, r.GID)
		}
		if c.want == "" {
			if err != nil {
				t.Errorf("--runas %s: %v", c.spec, err)
			}
			continue
		}
		if got != c.want {
			t.Errorf("--runas %s = %s, want %s", c.spec, got, c.want)
		}
	}
}
