package main

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/usernet/usernet/sandbox"
)

func TestParseFlagsSlirp4netnsForms(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want func(*options) string // "" when all is as expected
	}{
		{"rootlesskit", []string{"--mtu", "65520", "-r", "3", "--disable-host-loopback", "--cidr", "10.0.135.128/25", "1234", "tap0"},
			func(o *options) string {
				if o.mtu != 65520 || o.readyFD != 3 || !o.disableHostLoopback || o.plan.Net4 != netip.MustParsePrefix("10.0.135.128/25") || o.plan.IPv6() || o.pid != 1234 || o.tapName != "tap0" || o.configure {
					return "fields"
				}
				return ""
			}},
		{"podman", []string{"--disable-host-loopback", "--mtu=65520", "--enable-ipv6", "-c", "-e", "3", "-r", "4", "--netns-type=path", "/run/user/1000/netns/x", "tap0"},
			func(o *options) string {
				if !o.configure || o.exitFD != 3 || o.readyFD != 4 || !o.plan.IPv6() || o.path != "/run/user/1000/netns/x" || o.pid != 0 {
					return "fields"
				}
				return ""
			}},
		{"options after positionals", []string{"42", "tap1", "-c", "-m", "9000", "--macaddress", "02:00:00:00:00:01"},
			func(o *options) string {
				if !o.configure || o.mtu != 9000 || o.pid != 42 || o.tapName != "tap1" || o.mac.String() != "02:00:00:00:00:01" {
					return "fields"
				}
				return ""
			}},
		{"defaults", []string{"1", "tap0"},
			func(o *options) string {
				if o.mtu != 1500 || o.exitFD != -1 || o.readyFD != -1 || o.plan.Net4.String() != "10.0.2.0/24" || o.plan.Guest4.String() != "10.0.2.100" || o.plan.IPv6() || o.netnsType != "pid" || o.resolvConf != "/etc/resolv.conf" {
					return "defaults"
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, _, err := parseFlags(tt.argv, &bytes.Buffer{}, 2)
			if err != nil {
				t.Fatalf("parseFlags(%q) = %v", tt.argv, err)
			}
			if what := tt.want(o); what != "" {
				t.Fatalf("parseFlags(%q): wrong %s: %+v", tt.argv, what, o)
			}
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	tests := []struct {
		argv    []string
		wantMsg string
		usage   bool
	}{
		{[]string{"--foo", "1", "tap0"}, "unknown flag: --foo", true},
		{[]string{"1"}, "PID|PATH and TAPNAME are required", true},
		{[]string{}, "PID|PATH and TAPNAME are required", true},
		{[]string{"1", "tap0", "x"}, "too many arguments", true},
		{[]string{"--cidr=foo", "1", "tap0"}, "invalid CIDR: foo", false},
		{[]string{"--cidr=fd00::/64", "1", "tap0"}, "invalid CIDR: fd00::/64", false},
		{[]string{"--cidr=10.0.2.100/24", "1", "tap0"}, "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24", false},
		{[]string{"--cidr=10.0.0.0/26", "1", "tap0"}, "prefix length needs to be 1-25", false},
		{[]string{"--cidr=0.0.0.0/0", "1", "tap0"}, "prefix length needs to be 1-25", false},
		{[]string{"--mtu=0", "1", "tap0"}, "MTU must be a positive integer (< 65522)", false},
		{[]string{"--mtu=65522", "1", "tap0"}, "MTU must be a positive integer (< 65522)", false},
		{[]string{"-e", "-1", "1", "tap0"}, "exit-fd must be a non-negative integer", false},
		{[]string{"-r", "-2", "1", "tap0"}, "ready-fd must be a non-negative integer", false},
		{[]string{"--macaddress=02:00:00:00:00:01", "1", "tap0"}, "--macaddr cannot be specified when --configure or -c is not specified", true},
		{[]string{"-c", "--macaddress=zz", "1", "tap0"}, "invalid --macaddress", false},
		{[]string{"-c", "--macaddress=01:00:00:00:00:01", "1", "tap0"}, "multicast", false},
		{[]string{"--netns-type=foo", "1", "tap0"}, "--netns-type must be pid or path", false},
		{[]string{"abc", "tap0"}, "PID must be a positive integer", false},
		{[]string{"1", "tap0123456789abcdef"}, "too long", false},
		{[]string{"-p", "80", "1", "tap0"}, "--publish 80", false},
		{[]string{"-p", "8080:80/sctp", "1", "tap0"}, "--publish 8080:80/sctp", false},
		{[]string{"--target-type=bess", "1", "tap0"}, "not supported", false},
		{[]string{"--disable-dns", "--dns-upstream=127.0.0.1", "1", "tap0"}, "cannot be used together", false},
	}
	for _, tt := range tests {
		_, _, err := parseFlags(tt.argv, &bytes.Buffer{}, 2)
		if err == nil {
			t.Errorf("parseFlags(%q) = nil error, want %q", tt.argv, tt.wantMsg)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantMsg) {
			t.Errorf("parseFlags(%q) = %q, want it to contain %q", tt.argv, err, tt.wantMsg)
		}
		var ue *usageError
		if errors.As(err, &ue) != tt.usage {
			t.Errorf("parseFlags(%q): usage error = %v, want %v", tt.argv, !tt.usage, tt.usage)
		}
	}
}

func TestHelpListsWhatCallersProbe(t *testing.T) {
	var out bytes.Buffer
	usage(&out, newFlagSet(&options{}, &out))
	help := out.String()
	// rootlesskit and podman decide what to pass by searching --help.
	for _, f := range []string{"--netns-type", "--enable-ipv6", "--cidr", "--disable-host-loopback", "--mtu", "--outbound-addr", "--configure", "--exit-fd", "--ready-fd", "--disable-dns", "--userns-path", "--macaddress", "--enable-sandbox", "--enable-seccomp"} {
		if !strings.Contains(help, f) {
			t.Errorf("--help lacks %s:\n%s", f, help)
		}
	}
}

func TestRunFlagsStopAtCommand(t *testing.T) {
	o, args, err := parseRunFlags([]string{"--mtu", "65520", "curl", "-s", "http://10.0.2.2/"}, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseRunFlags: %v", err)
	}
	if o.mtu != 65520 || strings.Join(args, " ") != "curl -s http://10.0.2.2/" {
		t.Fatalf("parseRunFlags: mtu %d args %q", o.mtu, args)
	}
	_, args, err = parseRunFlags([]string{"-6", "--", "sh", "-c", "true"}, &bytes.Buffer{})
	if err != nil || strings.Join(args, " ") != "sh -c true" {
		t.Fatalf("parseRunFlags with --: args %q err %v", args, err)
	}
}

// TestPrintSettings pins the settings block, byte for byte as slirp4netns
// prints it (callers parse it), for a rootlesskit-like /25 with IPv6 and
// for a /16 without DNS.
func TestPrintSettings(t *testing.T) {
	for _, tt := range []struct {
		argv []string
		want string
	}{
		{[]string{"--cidr=10.0.135.128/25", "-6", "--mtu=65520", "--api-socket=/tmp/api.sock", "1", "tap0"}, `Starting slirp
* MTU:             65520
* Network:         10.0.135.128
* Netmask:         255.255.255.128
* Gateway:         10.0.135.130
* DNS:             10.0.135.131
* DNS upstream:    127.0.0.53:53
* DHCP begin:      10.0.135.143
* DHCP end:        10.0.135.158
* Recommended IP:  10.0.135.228
* API Socket:      /tmp/api.sock
* Outbound IPv4:    192.0.2.9
* Outbound IPv6:    2001:db8::9
* IPv6 network:    fd00::/64 (gateway fd00::2, DNS fd00::3)
WARNING: 127.0.0.1:* on the host is accessible as 10.0.135.130 (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)
`},
		{[]string{"--cidr=192.168.0.0/16", "--disable-dns", "--disable-host-loopback", "1", "tap0"}, `Starting slirp
* MTU:             1500
* Network:         192.168.0.0
* Netmask:         255.255.0.0
* Gateway:         192.168.0.2
* DHCP begin:      192.168.0.15
* DHCP end:        192.168.0.30
* Recommended IP:  192.168.0.100
* Outbound IPv4:    192.0.2.9
* Outbound IPv6:    2001:db8::9
`},
	} {
		o, _, err := parseFlags(tt.argv, &bytes.Buffer{}, 2)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", tt.argv, err)
		}
		p := &prepared{upstream: netip.MustParseAddrPort("127.0.0.53:53"), out4: netip.MustParseAddr("192.0.2.9"), out6: netip.MustParseAddr("2001:db8::9")}
		var out bytes.Buffer
		printSettings(&out, o, p)
		if out.String() != tt.want {
			t.Errorf("printSettings for %q:\n%s\nwant:\n%s", tt.argv, out.String(), tt.want)
		}
	}
}

// TestUpstreamOutside: an upstream inside the virtual network (which the
// forwarder would dial on the host's network) is refused; fd00::/64 is the
// virtual network only with IPv6 on.
func TestUpstreamOutside(t *testing.T) {
	for _, tt := range []struct {
		argv     []string
		upstream string
		refused  bool
	}{
		{[]string{"1", "tap0"}, "10.0.2.3:53", true},
		{[]string{"1", "tap0"}, "10.0.2.250:53", true},
		{[]string{"1", "tap0"}, "10.0.3.3:53", false},
		{[]string{"1", "tap0"}, "127.0.0.53:53", false},
		{[]string{"-6", "1", "tap0"}, "[fd00::3]:53", true},
		{[]string{"1", "tap0"}, "[fd00::3]:53", false},
		{[]string{"--cidr=10.0.135.128/25", "1", "tap0"}, "10.0.2.3:53", false},
	} {
		o, _, err := parseFlags(tt.argv, &bytes.Buffer{}, 2)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", tt.argv, err)
		}
		err = upstreamOutside(o.plan)(netip.MustParseAddrPort(tt.upstream))
		if (err != nil) != tt.refused {
			t.Errorf("%q: upstream %s: %v; want refused %v", tt.argv, tt.upstream, err, tt.refused)
		}
	}
}

func TestSandboxFlags(t *testing.T) {
	o, _, err := parseFlags([]string{"--enable-sandbox", "--enable-seccomp", "-c", "1", "tap0"}, &bytes.Buffer{}, 2)
	if err != nil {
		t.Fatalf("parseFlags with --enable-sandbox --enable-seccomp: %v", err)
	}
	if c := sandboxConfig(o); !c.Mounts || !c.Seccomp || !c.Enabled() {
		t.Fatalf("sandboxConfig = %+v; want both", c)
	}
	for _, f := range []string{"--enable-sandbox", "--enable-seccomp"} {
		_, _, err := parseRunFlags([]string{f, "--", "true"}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "not supported by usernet run") {
			t.Errorf("usernet run %s: %v; want it refused", f, err)
		}
	}
}

func TestParsePublish(t *testing.T) {
	o, _, err := parseFlags([]string{"-p", "8080:80", "--publish=[::1]:5353:53/udp", "1", "tap0"}, &bytes.Buffer{}, 2)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if len(o.publish) != 2 || o.publish[0].HostPort != 8080 || o.publish[0].GuestPort != 80 || o.publish[0].Proto != "tcp" ||
		o.publish[1].Proto != "udp" || o.publish[1].HostAddr.String() != "::1" || o.publish[1].GuestPort != 53 {
		t.Fatalf("publish = %+v", o.publish)
	}
}

// TestParseFlagsPcap: --pcap takes a file on both forms; -p stays
// --publish (slirp4netns's command line has no -p of its own).
func TestParseFlagsPcap(t *testing.T) {
	o, _, err := parseFlags([]string{"-p", "8080:80", "--pcap", "/tmp/x.pcap", "1", "tap0"}, &bytes.Buffer{}, 2)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.pcap != "/tmp/x.pcap" || len(o.publish) != 1 || o.publish[0].HostPort != 8080 {
		t.Fatalf("pcap %q, publish %+v; want /tmp/x.pcap and 8080:80", o.pcap, o.publish)
	}
	if o, _, err := parseFlags([]string{"1", "tap0"}, &bytes.Buffer{}, 2); err != nil || o.pcap != "" {
		t.Fatalf("default pcap %q, %v; want none", o.pcap, err)
	}
	if o, _, err := parseRunFlags([]string{"--pcap=run.pcap", "--", "true"}, &bytes.Buffer{}); err != nil || o.pcap != "run.pcap" {
		t.Fatalf("usernet run --pcap=run.pcap: pcap %q, %v", o.pcap, err)
	}
	if _, _, err := parseFlags([]string{"1", "tap0", "--pcap"}, &bytes.Buffer{}, 2); err == nil {
		t.Fatal("--pcap without a file: no error")
	}
	var out bytes.Buffer
	usage(&out, newFlagSet(&options{}, &out))
	if !strings.Contains(out.String(), "--pcap=FILE") {
		t.Errorf("--help lacks --pcap=FILE:\n%s", out.String())
	}
}

// TestOpenPcap: the capture file is created private to the user, or
// truncated; a path that cannot be created is an error at start.
func TestOpenPcap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	if err := os.WriteFile(path, []byte("an old capture"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := openPcap(path)
	if err != nil {
		t.Fatal(err)
	}
	capture, stop, err := startCapture(f, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	capture.WriteFrame(make([]byte, 60))
	stop()
	f.Close()
	if b, err := os.ReadFile(path); err != nil || len(b) != 24+16+60 {
		t.Fatalf("capture file: %d bytes, %v; want a header and one 60-byte frame", len(b), err)
	}
	os.Remove(path)
	f, err = openPcap(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new capture file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	if _, err := openPcap(filepath.Join(path, "sub")); err == nil || !strings.Contains(err.Error(), "--pcap") {
		t.Fatalf("openPcap under a file = %v; want a --pcap error", err)
	}
	if f, err := openPcap(""); f != nil || err != nil {
		t.Fatalf(`openPcap("") = %v, %v; want nothing`, f, err)
	}
	if capture, stop, err := startCapture(nil, t.Logf); capture != nil || err != nil {
		t.Fatalf("startCapture(nil) = %v, %v; want a nil capture", capture, err)
	} else {
		stop()
	}
}

// TestSandboxBindsResolvConf: a followed resolv.conf outside /etc and /run gets its
// directory, and that of its symlink's target, shown read-only in the sandbox; one under
// /etc or /run (shown already) or directly in / gets nothing.
func TestSandboxBindsResolvConf(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "resolv.conf"), []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(link, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(real, "resolv.conf"), filepath.Join(link, "resolv.conf")); err != nil {
		t.Fatal(err)
	}
	o := &options{}
	for _, tt := range []struct {
		path string
		want []sandbox.Bind
	}{
		{"", nil},
		{"/etc/resolv.conf", nil},
		{"/run/systemd/resolve/stub-resolv.conf", nil},
		{"/resolv.conf", nil},
		{filepath.Join(real, "resolv.conf"), []sandbox.Bind{{Path: real}}},
		{filepath.Join(link, "resolv.conf"), []sandbox.Bind{{Path: link}, {Path: real}}},
	} {
		got, err := sandboxBinds(o, tt.path)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("sandboxBinds(resolv.conf %q) = %+v, %v; want %+v", tt.path, got, err, tt.want)
		}
	}
}

// TestRepeatableFlagValues: a repeatable flag (stringList) keeps every value whole and in
// order, commas included, as pflag's StringArray did.
func TestRepeatableFlagValues(t *testing.T) {
	fs := newFlagSet(&options{}, &bytes.Buffer{})
	if err := fs.Parse([]string{"-p", "a,b", "--publish=c", "--allow-source", "x", "--allow-source=y,z"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{"publish": {"a,b", "c"}, "allow-source": {"x", "y,z"}} {
		if got := []string(*fs.Lookup(name).Value.(*stringList)); !slices.Equal(got, want) {
			t.Errorf("--%s: %q, want %q", name, got, want)
		}
	}
}
