package pasta

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustParse(t *testing.T, args ...string) *Options {
	t.Helper()
	o, err := Parse("pasta", args)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return o
}

// optionsDiff lists the fields in which got and want differ.
func optionsDiff(got, want *Options) string {
	var b strings.Builder
	g, w := reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem()
	for i := range g.NumField() {
		if gf, wf := g.Field(i).Interface(), w.Field(i).Interface(); !reflect.DeepEqual(gf, wf) {
			fmt.Fprintf(&b, "\n\t%s: got %+v, want %+v", g.Type().Field(i).Name, gf, wf)
		}
	}
	return b.String()
}

// defaults is what Parse returns for no arguments.
func defaults() *Options { return &Options{MTU: DefaultMTU, MAC: DefaultMAC} }

func TestParseDefaults(t *testing.T) {
	o := mustParse(t)
	if d := optionsDiff(o, defaults()); d != "" {
		t.Errorf("Parse():%s", d)
	}
	for _, f := range []*Forward{&o.TCP, &o.UDP, &o.TCPNs, &o.UDPNs} {
		if f.Mode != ModeUnset || !f.Auto() {
			t.Errorf("default forward %+v: want unset, meaning auto", f)
		}
	}
}

// Podman 5.4 (containers/common v0.62) passes exactly this for a container
// without published ports.
func TestParsePodman(t *testing.T) {
	o := mustParse(t, "--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
		"--no-map-gw", "--quiet", "--netns", "/run/user/1000/netns/netns-x", "--map-guest-addr", "169.254.1.2")
	want := defaults()
	want.ConfigNet = true
	want.NoRA = true
	want.DNSForward4 = ip("169.254.1.1")
	want.TCP, want.UDP, want.TCPNs, want.UDPNs = Forward{Mode: ModeNone}, Forward{Mode: ModeNone}, Forward{Mode: ModeNone}, Forward{Mode: ModeNone}
	want.NoMapGW = true
	want.Quiet = true
	want.NetNS = "/run/user/1000/netns/netns-x"
	want.NetNSOnly = true
	want.MapGuestAddr4 = ip("169.254.1.2")
	if d := optionsDiff(o, want); d != "" {
		t.Errorf("Podman:%s", d)
	}
}

// Podman with published ports: -p 8080:80, -p 127.0.0.1:5353:53/udp,
// -p [::1]:8081-8082:81-82 (HostIP raw, so IPv6 unbracketed).
func TestParsePodmanPorts(t *testing.T) {
	o := mustParse(t, "--config-net", "-t", "8080-8080:80-80", "-u", "127.0.0.1/5353-5353:53-53", "-t", "::1/8081-8082:81-82",
		"--dns-forward", "169.254.1.1", "-T", "none", "-U", "none", "--no-map-gw", "--quiet",
		"--netns", "/run/user/1000/netns/netns-x", "--map-guest-addr", "169.254.1.2")
	wantTCP := Forward{Mode: ModeSpec, Ranges: []PortRange{
		{First: 8080, Last: 8080, To: 80, Spec: "8080-8080:80-80"},
		{BindAddr: ip("::1"), First: 8081, Last: 8082, To: 81, Spec: "::1/8081-8082:81-82"},
	}}
	wantUDP := Forward{Mode: ModeSpec, Ranges: []PortRange{
		{BindAddr: ip("127.0.0.1"), First: 5353, Last: 5353, To: 53, Spec: "127.0.0.1/5353-5353:53-53"},
	}}
	if !reflect.DeepEqual(o.TCP, wantTCP) {
		t.Errorf("TCP = %+v, want %+v", o.TCP, wantTCP)
	}
	if !reflect.DeepEqual(o.UDP, wantUDP) {
		t.Errorf("UDP = %+v, want %+v", o.UDP, wantUDP)
	}
	if o.TCPNs.Mode != ModeNone || o.UDPNs.Mode != ModeNone {
		t.Errorf("-T/-U = %v/%v, want none", o.TCPNs.Mode, o.UDPNs.Mode)
	}
	var got []Mapping
	for m := range o.TCP.Mappings() {
		got = append(got, m)
	}
	wantMaps := []Mapping{{Port: 8080, To: 80}, {BindAddr: ip("::1"), Port: 8081, To: 81}, {BindAddr: ip("::1"), Port: 8082, To: 82}}
	if !reflect.DeepEqual(got, wantMaps) {
		t.Errorf("TCP mappings = %+v, want %+v", got, wantMaps)
	}
	if len(o.Warnings) != 0 {
		t.Errorf("warnings %q", o.Warnings)
	}
}

// rootlesskit 2.0's pasta network driver, with a child PID and with a
// detached netns.
func TestParseRootlesskit(t *testing.T) {
	common := []string{"--foreground", "--stderr", "--ns-ifname=tap0", "--mtu=65520", "--no-dhcp", "--no-ra",
		"--address=10.0.2.100", "--netmask=24", "--gateway=10.0.2.2", "--dns-forward=10.0.2.3", "--no-map-gw",
		"--ipv4-only", "--tcp-ports=auto", "--udp-ports=auto"}
	want := defaults()
	want.Foreground = true
	want.Stderr = true
	want.Warnings = []string{"--stderr will be dropped soon"}
	want.NsIfname = "tap0"
	want.MTUGiven = true
	want.NoDHCP = true
	want.NoRA = true
	want.Address4 = ip("10.0.2.100")
	want.Netmask, want.NetmaskGiven = 24, true
	want.Gateway4 = ip("10.0.2.2")
	want.DNSForward4 = ip("10.0.2.3")
	want.NoMapGW = true
	want.IPv4Only = true
	want.TCP = Forward{Mode: ModeAuto}
	want.UDP = Forward{Mode: ModeAuto}

	o := mustParse(t, append(common, "1234")...)
	w := *want
	w.Args = []string{"1234"}
	w.PID, w.HasPID = 1234, true
	w.NetNS, w.UserNS = "/proc/1234/ns/net", "/proc/1234/ns/user"
	if d := optionsDiff(o, &w); d != "" {
		t.Errorf("PID form:%s", d)
	}
	if bits, ok := o.Prefix4(); bits != 24 || !ok {
		t.Errorf("Prefix4 = %d, %v; want 24, true", bits, ok)
	}
	if !o.TCPNs.Auto() || !o.UDPNs.Auto() {
		t.Errorf("-T/-U not given must mean auto")
	}

	o = mustParse(t, append(common, "--userns=/proc/1/ns/user", "--netns=/tmp/x")...)
	w = *want
	w.NetNS, w.UserNS = "/tmp/x", "/proc/1/ns/user"
	if d := optionsDiff(o, &w); d != "" {
		t.Errorf("netns form:%s", d)
	}
}

// rootlesskit 2.3's feature probes, and what stops at --version or --help.
func TestParseEarlyExits(t *testing.T) {
	for _, tt := range []struct {
		args                  []string
		help, version, caps   bool
		hostLo, quiet, foregr bool
	}{
		{args: []string{"--version"}, version: true},
		{args: []string{"--host-lo-to-ns-lo", "--version"}, version: true, hostLo: true},
		{args: []string{"--vers"}, version: true},
		{args: []string{"--version", "--bogus", "-t", "abc"}, version: true},
		{args: []string{"-q", "--version", "-m", "abc"}, version: true, quiet: true},
		{args: []string{"-h"}, help: true},
		{args: []string{"--he"}, help: true},
		{args: []string{"-fh", "--bogus"}, help: true, foregr: true},
		{args: []string{"--print-capabilities"}, caps: true},
		{args: []string{"--version", "--help"}, version: true},
	} {
		o, err := Parse("pasta", tt.args)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.args, err)
			continue
		}
		if o.Help != tt.help || o.Version != tt.version || o.PrintCapabilities != tt.caps ||
			o.HostLoToNsLo != tt.hostLo || o.Quiet != tt.quiet || o.Foreground != tt.foregr {
			t.Errorf("Parse(%q) = %+v", tt.args, o)
		}
	}
}

func TestParseOptions(t *testing.T) {
	long := strings.Repeat("x", 253)
	tests := []struct {
		args []string
		want func(o *Options)
	}{
		// Logging and process.
		{[]string{"-d"}, func(o *Options) { o.Debug = true }},
		{[]string{"--debug"}, func(o *Options) { o.Debug = true }},
		{[]string{"--trace"}, func(o *Options) { o.Trace, o.Debug = true, true }},
		{[]string{"-q", "-d"}, func(o *Options) { o.Debug = true }},
		{[]string{"-d", "-q"}, func(o *Options) { o.Quiet = true }},
		{[]string{"--trace", "--quiet"}, func(o *Options) { o.Quiet = true }},
		{[]string{"-q", "--trace"}, func(o *Options) { o.Trace, o.Debug = true, true }},
		{[]string{"--trace", "-d"}, func(o *Options) { o.Trace, o.Debug = true, true }},
		{[]string{"-f"}, func(o *Options) { o.Foreground = true }},
		{[]string{"-fq"}, func(o *Options) { o.Foreground, o.Quiet = true, true }},
		{[]string{"-e", "-e"}, func(o *Options) {
			o.Stderr = true
			o.Warnings = []string{"--stderr will be dropped soon", "--stderr will be dropped soon"}
		}},
		{[]string{"-l", "/tmp/log", "--log-file=/tmp/log2"}, func(o *Options) { o.LogFile = "/tmp/log2" }},
		{[]string{"--log-size", "1048576"}, func(o *Options) { o.LogSize = 1048576 }},
		{[]string{"--log-size", "0x100000"}, func(o *Options) { o.LogSize = 1 << 20 }},
		{[]string{"--log-size", "1048576k"}, func(o *Options) { o.LogSize = 1048576 }},
		{[]string{"--log-size", "-1"}, func(o *Options) { o.LogSize = math.MaxUint64 }}, // size_t wraps past the minimum
		{[]string{"--runas", "1000:1000"}, func(o *Options) { o.RunAs = "1000:1000" }},
		{[]string{"--runas=nobody"}, func(o *Options) { o.RunAs = "nobody" }},
		{[]string{"-P", "/run/p.pid"}, func(o *Options) { o.PIDFile = "/run/p.pid" }},
		{[]string{"--pid", "/run/p.pid"}, func(o *Options) { o.PIDFile = "/run/p.pid" }},
		{[]string{"-p", "/tmp/x.pcap"}, func(o *Options) { o.Pcap = "/tmp/x.pcap" }},
		{[]string{"-F", "5"}, func(o *Options) { o.FD, o.FDGiven = 5, true }},
		{[]string{"--fd", "0"}, func(o *Options) { o.FD, o.FDGiven = 0, true }},
		{[]string{"--fd", "abc"}, func(o *Options) { o.FD, o.FDGiven = 0, true }}, // strtol, no end check

		// Link.
		{[]string{"-I", "eth0"}, func(o *Options) { o.NsIfname = "eth0" }},
		{[]string{"--ns-ifname", "abcdefghijklmno"}, func(o *Options) { o.NsIfname = "abcdefghijklmno" }},
		{[]string{"-m", "1500"}, func(o *Options) { o.MTU, o.MTUGiven = 1500, true }},
		{[]string{"-m1280"}, func(o *Options) { o.MTU, o.MTUGiven = 1280, true }},
		{[]string{"--mtu", "0x5dc"}, func(o *Options) { o.MTU, o.MTUGiven = 1500, true }},
		{[]string{"--mtu", "0"}, func(o *Options) { o.MTU, o.MTUGiven = 0, true }},
		{[]string{"--mtu", ""}, func(o *Options) { o.MTU, o.MTUGiven = 0, true }},
		{[]string{"--mtu", "65521"}, func(o *Options) { o.MTU, o.MTUGiven = 65521, true }},
		{[]string{"--mtu", " 1500"}, func(o *Options) { o.MTU, o.MTUGiven = 1500, true }},
		{[]string{"-M", "02:00:00:00:00:01"}, func(o *Options) { o.MAC = MAC{2, 0, 0, 0, 0, 1} }},
		{[]string{"--mac-addr", "AA:bb:CC:dd:EE:ff"}, func(o *Options) { o.MAC = MAC{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff} }},
		{[]string{"-M", " a:+b:0c:0d:0e:0f"}, func(o *Options) { o.MAC = MAC{0xa, 0xb, 0xc, 0xd, 0xe, 0xf} }}, // strtoul's leniency
		{[]string{"--ns-mac-addr", "02:00:00:00:00:02"}, func(o *Options) { o.NsMAC, o.NsMACGiven = MAC{2, 0, 0, 0, 0, 2}, true }},

		// Addresses.
		{[]string{"-a", "10.0.2.100", "-a", "fd00::100"}, func(o *Options) {
			o.Address4, o.Address6 = ip("10.0.2.100"), ip("fd00::100")
		}},
		{[]string{"-a", "10.0.2.100", "-a", "10.0.2.101"}, func(o *Options) { o.Address4 = ip("10.0.2.101") }},
		{[]string{"-a", "240.0.0.1"}, func(o *Options) { o.Address4 = ip("240.0.0.1") }},
		{[]string{"-n", "255.255.255.0"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 24, true }},
		{[]string{"-n", "24"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 24, true }},
		{[]string{"-n", "0x18"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 24, true }},
		{[]string{"-n", "24abc"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 24, true }},
		{[]string{"-n", "abc"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 0, true }},
		{[]string{"-n", "0.0.0.0"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 0, true }},
		{[]string{"-n", "255.255.255.254"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 31, true }},
		{[]string{"-n", "32"}, func(o *Options) { o.Netmask, o.NetmaskGiven = 32, true }},
		{[]string{"-g", "10.0.2.2", "--gateway", "fe80::1"}, func(o *Options) {
			o.Gateway4, o.Gateway6 = ip("10.0.2.2"), ip("fe80::1")
		}},
		{[]string{"-g", "224.0.0.1"}, func(o *Options) { o.Gateway4 = ip("224.0.0.1") }},
		{[]string{"-i", "eth0"}, func(o *Options) { o.Interface = "eth0" }},
		{[]string{"-o", "192.0.2.1", "-o", "2001:db8::1"}, func(o *Options) {
			o.Outbound4, o.Outbound6 = ip("192.0.2.1"), ip("2001:db8::1")
		}},
		{[]string{"-o", "127.0.0.1"}, func(o *Options) { o.Outbound4 = ip("127.0.0.1") }},
		{[]string{"--outbound-if4", "eth0", "--outbound-if6", "eth1"}, func(o *Options) {
			o.OutboundIf4, o.OutboundIf6 = "eth0", "eth1"
		}},
		{[]string{"-4"}, func(o *Options) { o.IPv4Only = true }},
		{[]string{"-4", "-6"}, func(o *Options) { o.IPv6Only = true }},
		{[]string{"--ipv6-only", "--ipv4-only"}, func(o *Options) { o.IPv4Only = true }},

		// Translation.
		{[]string{"--no-map-gw"}, func(o *Options) { o.NoMapGW = true }},
		{[]string{"--no-map"}, func(o *Options) { o.NoMapGW = true }},
		{[]string{"--map-host-loopback", "10.0.2.2", "--map-host-loopback", "fd00::2"}, func(o *Options) {
			o.MapHostLoopback4, o.MapHostLoopback6 = ip("10.0.2.2"), ip("fd00::2")
		}},
		{[]string{"--map-host-loopback", "10.0.2.2", "--map-host-loopback", "none"}, func(o *Options) { o.NoMapGW = true }},
		{[]string{"--map-host-loopback", "none", "--map-host-loopback", "10.0.2.9"}, func(o *Options) {
			o.NoMapGW, o.MapHostLoopback4 = true, ip("10.0.2.9")
		}},
		{[]string{"--map-guest-addr", "169.254.1.2", "--map-guest-addr", "fd00::1:2"}, func(o *Options) {
			o.MapGuestAddr4, o.MapGuestAddr6 = ip("169.254.1.2"), ip("fd00::1:2")
		}},
		{[]string{"--map-guest-addr", "169.254.1.2", "--map-guest-addr", "none"}, func(o *Options) {}},
		{[]string{"--dns-forward", "10.0.2.3", "--dns-forward", "fd00::3"}, func(o *Options) {
			o.DNSForward4, o.DNSForward6 = ip("10.0.2.3"), ip("fd00::3")
		}},
		{[]string{"--dns-host", "127.0.0.53", "--dns-host", "::1"}, func(o *Options) {
			o.DNSHost4, o.DNSHost6 = ip("127.0.0.53"), ip("::1")
		}},
		// -D none clears the DNS forwarding, even given after it.
		{[]string{"--dns-forward", "10.0.2.3", "--dns-host", "1.1.1.1", "-D", "none"}, func(o *Options) { o.DNSNone = true }},
		{[]string{"-D", "none", "--dns-forward", "10.0.2.3"}, func(o *Options) { o.DNSNone = true }},

		// DNS.
		{[]string{"-D", "1.1.1.1", "-D", "2606:4700::1111", "--dns", "8.8.8.8"}, func(o *Options) {
			o.DNS4, o.DNS6 = []netip.Addr{ip("1.1.1.1"), ip("8.8.8.8")}, []netip.Addr{ip("2606:4700::1111")}
		}},
		{[]string{"-D", "1.1.1.1", "-D", "none"}, func(o *Options) { o.DNSNone = true }},
		{[]string{"-D", "none", "-D", "1.1.1.1"}, func(o *Options) { o.DNS4 = []netip.Addr{ip("1.1.1.1")} }},
		{[]string{"-D", "1.0.0.1", "-D", "1.0.0.2", "-D", "1.0.0.3", "-D", "1.0.0.4", "-D", "1.0.0.5"}, func(o *Options) {
			o.DNS4 = []netip.Addr{ip("1.0.0.1"), ip("1.0.0.2"), ip("1.0.0.3"), ip("1.0.0.4")}
		}},
		{[]string{"-D", "1.0.0.1", "-D", "0.0.0.0", "-D", "1.0.0.3"}, func(o *Options) { o.DNS4 = []netip.Addr{ip("1.0.0.1")} }},
		{[]string{"-S", "example.com", "--search", "example.org"}, func(o *Options) { o.Search = []string{"example.com", "example.org"} }},
		{[]string{"-S", "none"}, func(o *Options) { o.SearchNone = true }},
		{[]string{"-S", "a", "-S", "none", "-S", "b"}, func(o *Options) {}}, // "none" leaves slot 0 empty
		{[]string{"-S", long}, func(o *Options) { o.Search = []string{long} }},
		{[]string{"--dhcp-dns", "--dhcp-search"}, func(o *Options) { o.DHCPDNS, o.DHCPSearch = true, true }},
		{[]string{"-H", "box", "--fqdn", "box.example.com"}, func(o *Options) { o.Hostname, o.FQDN = "box", "box.example.com" }},
		{[]string{"--hostname", long}, func(o *Options) { o.Hostname = long }},

		// Flags.
		{[]string{"--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-ra",
			"--freebind", "--no-splice", "--host-lo-to-ns-lo", "--no-netns-quit"}, func(o *Options) {
			o.NoTCP, o.NoUDP, o.NoICMP, o.NoDHCP, o.NoNDP, o.NoDHCPv6, o.NoRA = true, true, true, true, true, true, true
			o.FreeBind, o.NoSplice, o.HostLoToNsLo, o.NoNetnsQuit = true, true, true, true
		}},
		{[]string{"--no-tcp", "-t", "none", "-T", "none"}, func(o *Options) {
			o.NoTCP, o.TCP.Mode, o.TCPNs.Mode = true, ModeNone, ModeNone
		}},
		{[]string{"--config-net"}, func(o *Options) { o.ConfigNet, o.NoRA = true, true }},
		{[]string{"--config-net", "--no-copy-routes", "--no-copy-addrs"}, func(o *Options) {
			o.ConfigNet, o.NoRA, o.NoCopyRoutes, o.NoCopyAddrs = true, true, true, true
			o.Warnings = []string{"--no-copy-routes will be dropped soon", "--no-copy-addrs will be dropped soon"}
		}},
		{[]string{"--repair-path", "none"}, func(o *Options) {}},

		// Namespaces and arguments.
		{[]string{"--netns", "foo"}, func(o *Options) { o.NetNS, o.NetNSOnly = "/run/netns/foo", true }},
		{[]string{"--netns", ""}, func(o *Options) { o.NetNS, o.NetNSOnly = "/run/netns/", true }},
		{[]string{"--netns", "/run/netns/a", "--netns", "b"}, func(o *Options) { o.NetNS, o.NetNSOnly = "/run/netns/b", true }},
		{[]string{"--netns", "./x"}, func(o *Options) { o.NetNS, o.NetNSOnly = "./x", true }},
		{[]string{"--userns", "/u", "--netns", "/n"}, func(o *Options) { o.UserNS, o.NetNS = "/u", "/n" }},
		{[]string{"--userns", "/u", "--netns-only", "--netns", "/n"}, func(o *Options) { o.NetNS, o.NetNSOnly = "/n", true }},
		{[]string{"--netns-only", "--userns", "/u", "--netns", "/n"}, func(o *Options) { o.UserNS, o.NetNS = "/u", "/n" }},
		{[]string{"--netns-only"}, func(o *Options) { o.NetNSOnly = true }},
		{[]string{"--userns", "/u"}, func(o *Options) { o.UserNS = "/u" }},
		{[]string{"42"}, func(o *Options) {
			o.Args, o.PID, o.HasPID = []string{"42"}, 42, true
			o.NetNS, o.UserNS = "/proc/42/ns/net", "/proc/42/ns/user"
		}},
		{[]string{"--userns", "/u", "42"}, func(o *Options) {
			o.Args, o.PID, o.HasPID = []string{"42"}, 42, true
			o.NetNS, o.UserNS = "/proc/42/ns/net", "/u"
		}},
		{[]string{"--netns-only", "42"}, func(o *Options) {
			o.Args, o.PID, o.HasPID = []string{"42"}, 42, true
			o.NetNS, o.UserNS, o.NetNSOnly = "/proc/42/ns/net", "/proc/42/ns/user", true
		}},
		{[]string{"--", " +12"}, func(o *Options) {
			o.Args, o.PID, o.HasPID = []string{" +12"}, 12, true
			o.NetNS, o.UserNS = "/proc/12/ns/net", "/proc/12/ns/user"
		}},
		{[]string{""}, func(o *Options) { // strtol reads "" whole: PID 0
			o.Args, o.PID, o.HasPID = []string{""}, 0, true
			o.NetNS, o.UserNS = "/proc/0/ns/net", "/proc/0/ns/user"
		}},
		{[]string{"12abc"}, func(o *Options) { o.Args = []string{"12abc"} }},
		{[]string{"42", "43"}, func(o *Options) { o.Args = []string{"42", "43"} }},
		{[]string{"-f", "sh", "-c", "echo -q"}, func(o *Options) { o.Foreground, o.Args = true, []string{"sh", "-c", "echo -q"} }},
		{[]string{"-f", "--", "-q"}, func(o *Options) { o.Foreground, o.Args = true, []string{"-q"} }},
		{[]string{"-"}, func(o *Options) { o.Args = []string{"-"} }},
	}
	for _, tt := range tests {
		want := defaults()
		tt.want(want)
		o, err := Parse("pasta", tt.args)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.args, err)
			continue
		}
		if d := optionsDiff(o, want); d != "" {
			t.Errorf("Parse(%q):%s", tt.args, d)
		}
	}
}

// Every getopt_long error pasta can print, and every die() of its
// parsing, with the exact text.
func TestParseErrors(t *testing.T) {
	long := strings.Repeat("x", 254)
	path := strings.Repeat("p", 4096)
	tests := []struct {
		args  []string
		usage bool // a *UsageError, else a *ConfigError
		msg   string
	}{
		// getopt_long.
		{[]string{"--foo"}, true, "/usr/bin/pasta: unrecognized option '--foo'"},
		{[]string{"--foo=1"}, true, "/usr/bin/pasta: unrecognized option '--foo=1'"},
		{[]string{"--pid-file", "x"}, true, "/usr/bin/pasta: unrecognized option '--pid-file'"},
		{[]string{"--no-map-host-loopback"}, true, "/usr/bin/pasta: unrecognized option '--no-map-host-loopback'"},
		{[]string{"-E"}, true, "/usr/bin/pasta: invalid option -- 'E'"},
		{[]string{"-fqx"}, true, "/usr/bin/pasta: invalid option -- 'x'"},
		{[]string{"--no-map-gw=1"}, true, "/usr/bin/pasta: option '--no-map-gw' doesn't allow an argument"},
		{[]string{"--no-map=1"}, true, "/usr/bin/pasta: option '--no-map-gw' doesn't allow an argument"},
		{[]string{"--mtu"}, true, "/usr/bin/pasta: option '--mtu' requires an argument"},
		{[]string{"--mt"}, true, "/usr/bin/pasta: option '--mtu' requires an argument"},
		{[]string{"-m"}, true, "/usr/bin/pasta: option requires an argument -- 'm'"},
		{[]string{"-ft"}, true, "/usr/bin/pasta: option requires an argument -- 't'"},
		{[]string{"--map", "1.2.3.4"}, true,
			"/usr/bin/pasta: option '--map' is ambiguous; possibilities: '--map-host-loopback' '--map-guest-addr'"},
		{[]string{"--dns-=1.2.3.4"}, true,
			"/usr/bin/pasta: option '--dns-=1.2.3.4' is ambiguous; possibilities: '--dns-forward' '--dns-host'"},
		{[]string{"--no-d"}, true,
			"/usr/bin/pasta: option '--no-d' is ambiguous; possibilities: '--no-dhcp' '--no-dhcpv6' '--no-dhcp-dns' '--no-dhcp-search'"},
		// --socket-path is the same option as --socket, but not as --stderr.
		{[]string{"--s"}, true,
			"/usr/bin/pasta: option '--s' is ambiguous; possibilities: '--stderr' '--socket' '--search' '--socket-path'"},
		{[]string{"--ver", "--bogus"}, false, ""}, // not an error: see below
		{[]string{"--bogus", "--version"}, true, "/usr/bin/pasta: unrecognized option '--bogus'"},
		{[]string{"-t", "abc", "--bogus"}, true, "/usr/bin/pasta: unrecognized option '--bogus'"},
		{[]string{"-T", "abc", "-x"}, true, "/usr/bin/pasta: invalid option -- 'x'"},

		// Pass 1 dies in order, before a later getopt error.
		{[]string{"-m", "abc", "--bogus"}, false, "Invalid MTU: abc"},
		{[]string{"-m", "1500x"}, false, "Invalid MTU: 1500x"},
		{[]string{"-m", "0x"}, false, "Invalid MTU: 0x"},
		{[]string{"-m", "65522"}, false, "MTU 65522 too large (max 65521)"},
		{[]string{"-m", "-1"}, false, "MTU 18446744073709551615 too large (max 65521)"},
		{[]string{"-m", "99999999999999999999"}, false, "Invalid MTU: 99999999999999999999"},
		{[]string{"-a", "abc"}, false, "Invalid address: abc"},
		{[]string{"-a", "0.0.0.0"}, false, "Invalid address: 0.0.0.0"},
		{[]string{"-a", "255.255.255.255"}, false, "Invalid address: 255.255.255.255"},
		{[]string{"-a", "127.0.0.2"}, false, "Invalid address: 127.0.0.2"},
		{[]string{"-a", "224.0.0.1"}, false, "Invalid address: 224.0.0.1"},
		{[]string{"-a", "::"}, false, "Invalid address: ::"},
		{[]string{"-a", "::1"}, false, "Invalid address: ::1"},
		{[]string{"-a", "::ffff:10.0.0.1"}, false, "Invalid address: ::ffff:10.0.0.1"},
		{[]string{"-a", "::10.0.0.1"}, false, "Invalid address: ::10.0.0.1"},
		{[]string{"-a", "ff02::1"}, false, "Invalid address: ff02::1"},
		{[]string{"-a", "fe80::1%eth0"}, false, "Invalid address: fe80::1%eth0"},
		{[]string{"-a", "10.0.2.100/24"}, false, "Invalid address: 10.0.2.100/24"},
		{[]string{"-n", "255.0.255.0"}, false, "Invalid netmask: 255.0.255.0"},
		{[]string{"-n", "255.255.255.255"}, false, "Invalid netmask: 255.255.255.255"},
		{[]string{"-n", "33"}, false, "Invalid netmask: 33"},
		{[]string{"-n", "-1"}, false, "Invalid netmask: -1"},
		{[]string{"-M", "9a:55:9a:55:9a"}, false, "Invalid MAC address: 9a:55:9a:55:9a"},
		{[]string{"-M", "9a-55-9a-55-9a-55"}, false, "Invalid MAC address: 9a-55-9a-55-9a-55"},
		{[]string{"-M", "gg:55:9a:55:9a:55"}, false, "Invalid MAC address: gg:55:9a:55:9a:55"},
		{[]string{"-M", "9a:55:9a:55:9a:5g"}, false, "Invalid MAC address: 9a:55:9a:55:9a:5g"},
		{[]string{"-M", "-1:55:9a:55:9a:55"}, false, "Invalid MAC address: -1:55:9a:55:9a:55"},
		{[]string{"--ns-mac-addr", "x"}, false, "Invalid MAC address: x"},
		{[]string{"-g", "0.0.0.0"}, false, "Invalid gateway address: 0.0.0.0"},
		{[]string{"-g", "127.0.0.1"}, false, "Invalid gateway address: 127.0.0.1"},
		{[]string{"-g", "255.255.255.255"}, false, "Invalid gateway address: 255.255.255.255"},
		{[]string{"-g", "::1"}, false, "Invalid gateway address: ::1"},
		{[]string{"-g", "gw"}, false, "Invalid gateway address: gw"},
		{[]string{"-o", "0.0.0.0"}, false, "Invalid or redundant outbound address: 0.0.0.0"},
		{[]string{"-o", "::1"}, false, "Invalid or redundant outbound address: ::1"},
		{[]string{"-o", "eth0"}, false, "Invalid or redundant outbound address: eth0"},
		{[]string{"-I", ""}, false, "Invalid interface name: "},
		{[]string{"-I", "abcdefghijklmnop"}, false, "Invalid interface name: abcdefghijklmnop"},
		{[]string{"--outbound-if4", ""}, false, "Invalid interface name: "},
		{[]string{"--outbound-if6", "abcdefghijklmnop"}, false, "Invalid interface name: abcdefghijklmnop"},
		{[]string{"--dns-forward", "127.0.0.1"}, false, "Invalid DNS forwarding address: 127.0.0.1"},
		{[]string{"--dns-forward", "::1"}, false, "Invalid DNS forwarding address: ::1"},
		{[]string{"--dns-forward", "255.255.255.255"}, false, "Invalid DNS forwarding address: 255.255.255.255"},
		{[]string{"--dns-forward", "0.0.0.0"}, false, "Invalid DNS forwarding address: 0.0.0.0"},
		{[]string{"--dns-host", "0.0.0.0"}, false, "Invalid host nameserver address: 0.0.0.0"},
		{[]string{"--dns-host", "::"}, false, "Invalid host nameserver address: ::"},
		{[]string{"--dns-host", "none"}, false, "Invalid host nameserver address: none"},
		{[]string{"--map-host-loopback", "127.0.0.1"}, false, "Invalid address to remap to host: 127.0.0.1"},
		{[]string{"--map-host-loopback", "::1"}, false, "Invalid address to remap to host: ::1"},
		{[]string{"--map-guest-addr", "224.0.0.1"}, false, "Invalid address to remap to host: 224.0.0.1"},
		{[]string{"--map-guest-addr", "0.0.0.0"}, false, "Invalid address to remap to host: 0.0.0.0"},
		{[]string{"-S", ""}, false, "Cannot use DNS search domain "},
		{[]string{"-S", long}, false, "Cannot use DNS search domain " + long},
		{[]string{"-S", "a", "-S", "b", "-S", "c", "-S", "d", "-S", "e", "-S", "f", "-S", "g"}, false, "Cannot use DNS search domain g"},
		{[]string{"-S", "a", "-S", "b", "-S", "c", "-S", "none", "-S", "d", "-S", "e", "-S", "f", "-S", "g"}, false, "Cannot use DNS search domain g"},
		{[]string{"-H", long}, false, "Invalid hostname: " + long},
		{[]string{"--fqdn", long}, false, "Invalid FQDN: " + long},
		{[]string{"--log-size", "100"}, false, "Invalid --log-size: 100"},
		{[]string{"--log-size", "abc"}, false, "Invalid --log-size: abc"},
		{[]string{"--log-size", "99999999999999999999"}, false, "Invalid --log-size: 99999999999999999999"},
		{[]string{"-F", "1"}, false, "Invalid --fd: 1"},
		{[]string{"-F", "-3"}, false, "Invalid --fd: -3"},
		{[]string{"-F", "2147483648"}, false, "Invalid --fd: 2147483648"},
		{[]string{"-p", ""}, false, "Invalid pcap path: "},
		{[]string{"-P", ""}, false, "Invalid PID file: "},
		{[]string{"-P", path}, false, "Invalid PID file: " + path},
		{[]string{"--userns", ""}, false, "Invalid userns: "},
		{[]string{"--netns", "/" + path}, false, "Network namespace name/path /" + path + " too long"},

		// passt-only options in pasta mode.
		{[]string{"-s", "/tmp/s"}, false, "-s is for passt / vhost-user mode only"},
		{[]string{"--socket", "/tmp/s"}, false, "-s is for passt / vhost-user mode only"},
		{[]string{"--socket-path", "/tmp/s"}, false, "-s is for passt / vhost-user mode only"},
		{[]string{"--sock", "/tmp/s"}, false, "-s is for passt / vhost-user mode only"},
		{[]string{"-1"}, false, "--one-off is for passt mode only"},
		{[]string{"--one-off"}, false, "--one-off is for passt mode only"},
		{[]string{"--no-dhcp-dns"}, false, "--no-dhcp-dns is for passt mode only"},
		{[]string{"--no-dhcp-search"}, false, "--no-dhcp-search is for passt mode only"},
		{[]string{"--repair-path", "/tmp/r"}, false, "--repair-path is for vhost-user mode only"},
		{[]string{"--vhost-user"}, false, "vhost-user mode is not supported"},
		{[]string{"--v"}, false, "vhost-user mode is not supported"},

		// After pass 1.
		{[]string{"--no-copy-routes"}, false, "--no-copy-routes needs --config-net"},
		{[]string{"--no-copy-addrs"}, false, "--no-copy-addrs needs --config-net"},
		{[]string{"--no-copy-addrs", "--no-copy-routes"}, false, "--no-copy-routes needs --config-net"},
		{[]string{"--no-copy-routes", "-t", "abc"}, false, "--no-copy-routes needs --config-net"},

		// Pass 2: -t, -u, -D in order; then the arguments; then -T/-U.
		{[]string{"-t", "abc", "-m", "abc"}, false, "Invalid MTU: abc"},
		{[]string{"-T", "xyz", "-t", "abc"}, false, "Invalid port specifier abc"},
		{[]string{"-u", "abc", "-t", "xyz"}, false, "Invalid port specifier abc"},
		{[]string{"-D", "abc", "-t", "xyz"}, false, "Cannot use DNS address abc"},
		{[]string{"-D", "fe80::1%eth0"}, false, "Cannot use DNS address fe80::1%eth0"},
		{[]string{"-t", "80", "--no-tcp"}, false, "TCP port forwarding requested but TCP is disabled"},
		{[]string{"--no-tcp", "-t", "auto"}, false, "TCP port forwarding requested but TCP is disabled"},
		{[]string{"--no-tcp", "-T", "80"}, false, "TCP port forwarding requested but TCP is disabled"},
		{[]string{"--no-udp", "-u", "53"}, false, "UDP port forwarding requested but UDP is disabled"},
		{[]string{"--no-udp", "-U", "auto"}, false, "UDP port forwarding requested but UDP is disabled"},
		{[]string{"--netns", "/n", "1"}, false, "Both --netns and PID or command given"},
		{[]string{"--netns", "/n", "sh", "-c", "x"}, false, "Both --netns and PID or command given"},
		{[]string{"--netns", "/n", "-T", "abc", "1"}, false, "Both --netns and PID or command given"},
		{[]string{"-t", "abc", "--netns", "/n", "1"}, false, "Invalid port specifier abc"},
		{[]string{"-1"}, false, "--one-off is for passt mode only"},
		{[]string{"-T", "abc", "--", "-1"}, false, "Invalid PID -1"},
		{[]string{"2147483648"}, false, "Invalid PID 2147483648"},
		{[]string{"99999999999999999999"}, false, "Invalid PID 99999999999999999999"},
	}
	for _, tt := range tests {
		_, err := Parse("/usr/bin/pasta", tt.args)
		if tt.msg == "" {
			if err != nil {
				t.Errorf("Parse(%q): unexpected %v", tt.args, err)
			}
			continue
		}
		var ue *UsageError
		var ce *ConfigError
		switch {
		case err == nil:
			t.Errorf("Parse(%q): no error, want %q", tt.args, tt.msg)
		case tt.usage && !errors.As(err, &ue), !tt.usage && !errors.As(err, &ce):
			t.Errorf("Parse(%q): %T %q, want usage=%v %q", tt.args, err, err, tt.usage, tt.msg)
		case err.Error() != tt.msg:
			t.Errorf("Parse(%q):\n got %q\nwant %q", tt.args, err.Error(), tt.msg)
		}
	}
}

func TestPrefix4(t *testing.T) {
	for _, tt := range []struct {
		args []string
		bits int
		ok   bool
	}{
		{nil, 0, false},
		{[]string{"-n", "24"}, 0, false}, // the template address's prefix wins without -a
		{[]string{"-a", "10.0.2.100"}, 8, true},
		{[]string{"-a", "172.16.0.1"}, 16, true},
		{[]string{"-a", "192.168.1.1"}, 24, true},
		{[]string{"-a", "240.0.0.1"}, 32, true},
		{[]string{"-a", "10.0.2.100", "-n", "255.255.255.0"}, 24, true},
		{[]string{"-a", "192.168.1.1", "-n", "0"}, 24, true},
		{[]string{"-n", "20", "-a", "10.1.2.3"}, 20, true},
		{[]string{"-a", "fd00::1", "-n", "20"}, 0, false},
	} {
		bits, ok := mustParse(t, tt.args...).Prefix4()
		if bits != tt.bits || ok != tt.ok {
			t.Errorf("%q: Prefix4() = %d, %v; want %d, %v", tt.args, bits, ok, tt.bits, tt.ok)
		}
	}
}

func TestHostLoopbackMap(t *testing.T) {
	gw4, gw6 := ip("10.0.2.2"), ip("fe80::1")
	for _, tt := range []struct {
		args         []string
		want4, want6 netip.Addr
	}{
		{nil, gw4, gw6},
		{[]string{"--no-map-gw"}, netip.Addr{}, netip.Addr{}},
		{[]string{"--map-host-loopback", "none"}, netip.Addr{}, netip.Addr{}},
		{[]string{"--map-host-loopback", "10.0.2.9"}, ip("10.0.2.9"), gw6},
		{[]string{"--no-map-gw", "--map-host-loopback", "fd00::9"}, netip.Addr{}, ip("fd00::9")},
	} {
		o := mustParse(t, tt.args...)
		if got := o.HostLoopbackMap(false, gw4); got != tt.want4 {
			t.Errorf("%q: IPv4 = %v, want %v", tt.args, got, tt.want4)
		}
		if got := o.HostLoopbackMap(true, gw6); got != tt.want6 {
			t.Errorf("%q: IPv6 = %v, want %v", tt.args, got, tt.want6)
		}
	}
}

func TestParseExtra(t *testing.T) {
	checked := errors.New("bad api socket")
	extra := []ExtraOption{
		{Name: "api-socket", HasArg: true, Check: func(s string) error {
			if s == "" {
				return checked
			}
			return nil
		}},
		{Name: "enable-sandbox"},
		{Name: "enable-seccomp"},
		{Name: "dns-upstream", HasArg: true},
	}
	parse := func(args ...string) (*Options, error) { return Parse("pasta", args, WithExtra(extra...)) }

	o, err := parse("--api-socket", "/run/a.sock", "--enable-sandbox", "--api=/run/b.sock", "-f", "--dns-up", "1.1.1.1:53", "42")
	if err != nil {
		t.Fatal(err)
	}
	want := []ExtraArg{{"api-socket", "/run/a.sock"}, {"enable-sandbox", ""}, {"api-socket", "/run/b.sock"}, {"dns-upstream", "1.1.1.1:53"}}
	if !reflect.DeepEqual(o.Extra, want) || !o.Foreground || o.PID != 42 {
		t.Errorf("got %+v", o)
	}
	if v, ok := o.ExtraValue("api-socket"); v != "/run/b.sock" || !ok {
		t.Errorf("ExtraValue(api-socket) = %q, %v", v, ok)
	}
	if v, ok := o.ExtraValue("enable-sandbox"); v != "" || !ok {
		t.Errorf("ExtraValue(enable-sandbox) = %q, %v", v, ok)
	}
	if _, ok := o.ExtraValue("enable-seccomp"); ok {
		t.Errorf("ExtraValue(enable-seccomp) given")
	}

	for _, tt := range []struct {
		args []string
		err  string
	}{
		{[]string{"--enable"}, "pasta: option '--enable' is ambiguous; possibilities: '--enable-sandbox' '--enable-seccomp'"},
		// An extra option makes a prefix of pasta's ambiguous.
		{[]string{"--dns-", "x"}, "pasta: option '--dns-' is ambiguous; possibilities: '--dns-forward' '--dns-host' '--dns-upstream'"},
		{[]string{"--enable-sandbox=1"}, "pasta: option '--enable-sandbox' doesn't allow an argument"},
		{[]string{"--api-socket"}, "pasta: option '--api-socket' requires an argument"},
		{[]string{"--api-socket", "", "-m", "x"}, "bad api socket"},
		{[]string{"-m", "x", "--api-socket", ""}, "Invalid MTU: x"},
	} {
		if _, err := parse(tt.args...); err == nil || err.Error() != tt.err {
			t.Errorf("%q: error %v, want %q", tt.args, err, tt.err)
		}
	}
	if _, err := parse("--api-socket", ""); !errors.Is(err, checked) {
		t.Errorf("Check's error not returned as is: %v", err)
	}

	// Without the extras, they are unknown.
	if _, err := Parse("pasta", []string{"--enable-sandbox"}); err == nil ||
		err.Error() != "pasta: unrecognized option '--enable-sandbox'" {
		t.Errorf("without WithExtra: %v", err)
	}

	defer func() {
		if recover() == nil {
			t.Errorf("an extra option named like one of pasta's did not panic")
		}
	}()
	Parse("pasta", nil, WithExtra(ExtraOption{Name: "netns"}))
}
