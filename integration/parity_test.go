package integration

// slirp4netns parity: behaviour that callers of slirp4netns 1.2 rely on and that no other
// test covers end to end. Each test runs the binary under test and, where the result must
// be the same, the real slirp4netns too (when installed), with the same flags and the same
// expectations; and, where it applies, under --enable-sandbox --enable-seccomp, as podman
// passes them by default.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// parityBin is one binary a parity test runs: the one under test, and slirp4netns.
type parityBin struct {
	name    string // subtest name: "usernet" or "slirp4netns"
	path    string
	usernet bool // takes usernet-only flags (--dns-upstream)
}

// parityBins returns the binary under test and, if it is not slirp4netns itself, the
// installed slirp4netns (the reference), so that every expectation is checked on both.
func parityBins(t *testing.T) []parityBin {
	t.Helper()
	if !suite.isUsernet {
		return []parityBin{{"slirp4netns", suite.bin, false}}
	}
	bins := []parityBin{{"usernet", suite.bin, true}}
	if p, err := exec.LookPath("slirp4netns"); err == nil {
		bins = append(bins, parityBin{"slirp4netns", p, false})
	} else {
		t.Logf("slirp4netns is not installed: checking usernet alone")
	}
	return bins
}

// sandboxModes are the two ways each parity test runs the binaries: plain, and confined
// as podman runs them.
var sandboxModes = []struct {
	name  string
	flags []string
}{
	{"plain", nil},
	{"sandbox-seccomp", []string{"--enable-sandbox", "--enable-seccomp"}},
}

// startBin is startUsernet for a given binary: -r 3 (waits for "1"), and for usernet a
// --dns-upstream that answers nothing unless o.flags has one. Cleanup stops it.
func startBin(t *testing.T, tg *target, b parityBin, o usernetOpts) *usernet {
	t.Helper()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	args := append(append([]string{}, o.flags...), "-r", "3")
	if b.usernet && !hasFlag(o.flags, "--dns-upstream") {
		args = append(args, "--dns-upstream", "127.0.0.1:1")
	}
	tap := o.tap
	if tap == "" {
		tap = "tap0"
	}
	args = append(args, strconv.Itoa(tg.pid), tap)
	cmd := asUser(exec.Command(b.path, args...))
	cmd.Dir = suite.dir
	cmd.Env = append(os.Environ(), o.env...)
	cmd.ExtraFiles = append([]*os.File{readyW}, o.extra...)
	u := &usernet{startProc(t, cmd)}
	readyW.Close()
	t.Cleanup(func() {
		u.stop()
		if t.Failed() {
			t.Logf("%s\nstdout:\n%s\nstderr:\n%s", u.name, u.stdout.String(), u.stderr.String())
		}
	})
	waitReady(t, u, readyR)
	return u
}

// dnsFor returns the flags pointing b at a DNS server of this test, and that server's A
// answer; slirp4netns relays to resolv.conf's 127.0.0.53 (netns.sh, dnsserver_test.go).
func dnsFor(t *testing.T, b parityBin) ([]string, string) {
	if !b.usernet {
		return nil, resolvAnswer
	}
	s := startDNS(t, "198.51.100.77")
	return []string{"--dns-upstream", s.addr}, "198.51.100.77"
}

// --- 1. DHCP without --configure ---

// udhcpcScript reports what busybox udhcpc got, one KEY=VALUE a line, in lease.out beside
// itself; it configures nothing (the test does, from the values).
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] || exit 0
out="$(dirname "$0")/lease.out"
printf 'ip=%s\nrouter=%s\ndns=%s\nsubnet=%s\nlease=%s\nserverid=%s\n' "$ip" "$router" "$dns" "$subnet" "$lease" "$serverid" > "$out.tmp"
mv "$out.tmp" "$out"
`

// udhcpc runs busybox udhcpc on tap0 in tg until it has a lease (or gives up after 5
// discovers 2 s apart) and returns what the script saw.
func udhcpc(t *testing.T, tg *target, dir string) map[string]string {
	t.Helper()
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "lease.out")
	os.Remove(out)
	ctx := testContext(t, 30*time.Second)
	if o, err := tg.tryNsenter(ctx, "busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", script); err != nil {
		t.Fatalf("udhcpc got no lease: %v (stdout %q)", err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("udhcpc exited 0 but its script wrote nothing: %v", err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestParityDHCP: a guest that configures itself with DHCP (usernet started without -c,
// busybox udhcpc in the namespace) gets network+15, the gateway as router and server, the
// DNS forwarder, the netmask and a 24 h lease; the leased address works (TCP through the
// gateway to the host's loopback); then a second client MAC gets another address of the
// pool.
func TestParityDHCP(t *testing.T) {
	setup(t)
	t.Parallel()
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skipf("busybox (udhcpc) is not installed: %v", err)
	}
	for _, b := range parityBins(t) {
		for _, sb := range sandboxModes {
			for _, nw := range []struct {
				name                  string
				flags                 []string
				ip, router, dns, mask string
				prefix                int
				pool                  netip.Prefix // the DHCP range lies in it
			}{
				{"default", nil, "10.0.2.15", "10.0.2.2", "10.0.2.3", "255.255.255.0", 24, netip.MustParsePrefix("10.0.2.0/24")},
				{"cidr", []string{"--cidr", "10.0.135.128/25"}, "10.0.135.143", "10.0.135.130", "10.0.135.131", "255.255.255.128", 25, netip.MustParsePrefix("10.0.135.128/25")},
			} {
				t.Run(b.name+"/"+sb.name+"/"+nw.name, func(t *testing.T) {
					t.Parallel()
					ctx := testContext(t, defaultTimeout)
					tg := newTarget(t)
					startBin(t, tg, b, usernetOpts{flags: append(append([]string{}, sb.flags...), nw.flags...)})
					tg.nsenter(t, ctx, "ip", "link", "set", "lo", "up")
					tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "address", "02:00:5e:00:53:11")
					tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "up")
					dir := userDir(t)

					got := udhcpc(t, tg, dir)
					want := map[string]string{"ip": nw.ip, "router": nw.router, "dns": nw.dns,
						"subnet": nw.mask, "lease": "86400", "serverid": nw.router}
					for k, v := range want {
						if got[k] != v {
							t.Errorf("udhcpc lease %s=%q; want %q (all: %v)", k, got[k], v, got)
						}
					}
					if t.Failed() {
						t.FailNow()
					}

					// The lease in use, as udhcpc's default script would set it up.
					tg.nsenter(t, ctx, "ip", "addr", "add", fmt.Sprintf("%s/%d", got["ip"], nw.prefix), "dev", "tap0")
					tg.nsenter(t, ctx, "ip", "route", "add", "default", "via", got["router"], "dev", "tap0")
					p, hashes := hostHashServer(t)
					checkTCPUp(t, ctx, tg, net.JoinHostPort(got["router"], p), 1<<20, hashes)

					// Another client (another MAC, so another client id) gets another address.
					tg.nsenter(t, ctx, "ip", "addr", "flush", "dev", "tap0")
					tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "down")
					tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "address", "02:00:5e:00:53:12")
					tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "up")
					got2 := udhcpc(t, tg, dir)
					a2, err := netip.ParseAddr(got2["ip"])
					if err != nil || got2["ip"] == got["ip"] || !nw.pool.Contains(a2) || got2["router"] != nw.router {
						t.Errorf("udhcpc with a second MAC: %v; want an address in %v other than %s, router %s", got2, nw.pool, got["ip"], nw.router)
					}
					t.Logf("second MAC leased %s", got2["ip"])
				})
			}
		}
	}
}

// --- 2. --cidr with --configure ---

// TestParityCIDRConfigure: with --cidr 10.0.135.128/25 -c the guest is .228/25 with a
// default route via .130, which reaches the host's loopback (TCP) and answers ping, and
// .131 relays DNS.
func TestParityCIDRConfigure(t *testing.T) {
	setup(t)
	t.Parallel()
	for _, b := range parityBins(t) {
		for _, sb := range sandboxModes {
			t.Run(b.name+"/"+sb.name, func(t *testing.T) {
				t.Parallel()
				ctx := testContext(t, defaultTimeout)
				dnsFlags, answer := dnsFor(t, b)
				tg := newTarget(t)
				flags := append(append([]string{"-c", "--cidr", "10.0.135.128/25"}, sb.flags...), dnsFlags...)
				startBin(t, tg, b, usernetOpts{flags: flags})

				tap := tg.links(t, ctx)["tap0"]
				if !tap.up() || !slices.Contains(tap.addrs(), "10.0.135.228/25") {
					t.Errorf("tap0 flags %v, addresses %v; want UP with 10.0.135.228/25", tap.Flags, tap.addrs())
				}
				var routes []ipRoute
				tg.ipJSON(t, ctx, &routes, "route", "show")
				if !slices.Contains(routes, ipRoute{Dst: "default", Gateway: "10.0.135.130", Dev: "tap0"}) {
					t.Errorf("routes %+v; want default via 10.0.135.130 dev tap0", routes)
				}
				p, hashes := hostHashServer(t)
				checkTCPUp(t, ctx, tg, "10.0.135.130:"+p, 1<<20, hashes)
				checkDNS(t, tg, "10.0.135.131:53", "udp", "A", "cidr.usernet.test", []string{answer})
				checkDNS(t, tg, "10.0.135.131:53", "tcp", "A", "cidr-tcp.usernet.test", []string{answer})
				checkPing(t, tg, "10.0.135.130")
			})
		}
	}
}

// --- 3. --outbound-addr, --outbound-addr6 ---

// Outbound addresses: on a veth pair of their own in the private host netns (upo0, peer
// upo1), so that the interface-name form names an interface whose address differs from
// uh0's, and so that the source address other tests' connections get (uh0's, chosen by
// the route) does not change. Packets bound to them still leave through uh0.
const (
	outIf    = "upo0"
	outPeer  = "upo1"
	outAddr4 = "198.51.100.2"
	outAddr6 = "2001:db8::2"
)

// outboundSetup creates upo0 with outAddr4 and outAddr6, and a route in the fake internet
// back to outAddr6 (IPv4 needs none: uh0 answers ARP for any local address), all removed
// when t ends.
func outboundSetup(t *testing.T) {
	t.Helper()
	inet := filepath.Base(suite.inetNetns)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("link", "add", outIf, "type", "veth", "peer", "name", outPeer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", outIf).Run() })
	run("addr", "add", outAddr4+"/32", "dev", outIf)
	run("addr", "add", outAddr6+"/128", "dev", outIf, "nodad")
	run("link", "set", outPeer, "up")
	run("link", "set", outIf, "up")
	run("-n", inet, "-6", "route", "add", outAddr6+"/128", "via", os.Getenv("USERNET_HOST6"), "dev", "ui0")
	t.Cleanup(func() { exec.Command("ip", "-n", inet, "-6", "route", "del", outAddr6+"/128").Run() })
}

// peerRecorder is a TCP and a UDP echo server in the fake internet that record the
// addresses their clients come from.
type peerRecorder struct {
	tcp, udp string // ports
	mu       sync.Mutex
	seen     map[string][]string // "tcp"/"udp" -> client addresses
}

func newPeerRecorder(t *testing.T) *peerRecorder {
	r := &peerRecorder{seen: map[string][]string{}}
	record := func(proto string, a net.Addr) {
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return
		}
		r.mu.Lock()
		r.seen[proto] = append(r.seen[proto], ap.Addr().Unmap().String())
		r.mu.Unlock()
	}
	ln := inetListenTCP(t, "[::]:0")
	serveTCP(t, ln, func(c *net.TCPConn) { record("tcp", c.RemoteAddr()) })
	pc := inetListenUDP(t, "[::]:0")
	tr := newTracker(t, pc)
	tr.wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			record("udp", from)
			pc.WriteTo(buf[:n], from)
		}
	})
	r.tcp, r.udp = port(ln.Addr()), port(pc.LocalAddr())
	return r
}

// check connects from tg to host (TCP, then a UDP exchange) and checks that both arrived
// from want, and from nothing else.
func (r *peerRecorder) check(t *testing.T, tg *target, host, want string) {
	t.Helper()
	r.mu.Lock()
	r.seen = map[string][]string{}
	r.mu.Unlock()
	checkDial(t, tg, net.JoinHostPort(host, r.tcp), "")
	checkUDP(t, tg, net.JoinHostPort(host, r.udp), 1)
	deadline := time.Now().Add(5 * time.Second) // the accept may trail the client's connect
	for {
		r.mu.Lock()
		tcp, udp := slices.Clone(r.seen["tcp"]), slices.Clone(r.seen["udp"])
		r.mu.Unlock()
		if len(tcp) > 0 || time.Now().After(deadline) {
			if len(tcp) == 0 || len(udp) == 0 {
				t.Fatalf("to %s: the fake internet saw TCP from %q, UDP from %q; want both from %s", host, tcp, udp, want)
			}
			for _, a := range append(tcp, udp...) {
				if a != want {
					t.Errorf("to %s: the fake internet saw TCP from %q, UDP from %q; want only %s", host, tcp, udp, want)
					break
				}
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLoopbackSource connects from tg to gateway (the host's loopback, which a server
// listens on at loopback) and checks the source address the server sees.
func checkLoopbackSource(t *testing.T, tg *target, loopback, gateway, want string) {
	t.Helper()
	ln := listenTCP(t, net.JoinHostPort(loopback, "0"))
	seen := make(chan string, 4)
	serveTCP(t, ln, func(c *net.TCPConn) {
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		seen <- ap.Addr().Unmap().String()
	})
	checkDial(t, tg, net.JoinHostPort(gateway, port(ln.Addr())), "")
	select {
	case got := <-seen:
		if got != want {
			t.Errorf("a connection to %s (the host's %s) came from %s; want %s", gateway, loopback, got, want)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the server on %s saw no connection from %s", loopback, gateway)
	}
}

// TestParityOutboundAddr: connections to the outside (TCP and UDP) come from
// --outbound-addr / --outbound-addr6, given as an address or as an interface name (its
// first address), and so do TCP connections to the host's loopback through the gateway;
// a value that is neither is an error at start.
func TestParityOutboundAddr(t *testing.T) {
	setup(t)
	t.Parallel()
	outboundSetup(t)
	host4 := os.Getenv("USERNET_HOST4")
	for _, b := range parityBins(t) {
		for _, sb := range sandboxModes {
			for _, tc := range []struct {
				name  string
				flags []string
				want4 string // source the fake internet sees
				want6 string // "": no IPv6 check
			}{
				{"none", nil, host4, ""},
				{"address", []string{"--outbound-addr=" + outAddr4, "--outbound-addr6", outAddr6}, outAddr4, outAddr6},
				{"ifname", []string{"--outbound-addr", outIf, "--outbound-addr6=" + outIf}, outAddr4, outAddr6},
				{"uh0", []string{"--outbound-addr=uh0", "--outbound-addr6=uh0"}, host4, os.Getenv("USERNET_HOST6")},
			} {
				t.Run(b.name+"/"+sb.name+"/"+tc.name, func(t *testing.T) {
					t.Parallel()
					rec := newPeerRecorder(t)
					tg := newTarget(t)
					flags := append(append([]string{"-c"}, sb.flags...), tc.flags...)
					if tc.want6 != "" {
						flags = append(flags, "-6")
					}
					startBin(t, tg, b, usernetOpts{flags: flags})
					rec.check(t, tg, suite.inet4, tc.want4)
					// The gateway still reaches the host's loopback, from the
					// outbound address when there is one (slirp4netns binds every
					// outbound socket).
					p, hashes := hostHashServer(t)
					checkTCPUp(t, testContext(t, defaultTimeout), tg, "10.0.2.2:"+p, 1<<16, hashes)
					lo4 := "127.0.0.1"
					if len(tc.flags) > 0 {
						lo4 = tc.want4
					}
					checkLoopbackSource(t, tg, "127.0.0.1", "10.0.2.2", lo4)
					if tc.want6 != "" {
						waitSLAAC(t, testContext(t, 30*time.Second), tg)
						rec.check(t, tg, suite.inet6, tc.want6)
						checkLoopbackSource(t, tg, "::1", "fd00::2", tc.want6)
					}
				})
			}
		}
		t.Run(b.name+"/bad", func(t *testing.T) {
			t.Parallel()
			tg := newTarget(t)
			pid := strconv.Itoa(tg.pid)
			for _, tc := range []struct {
				flag, want string
			}{
				{"--outbound-addr=no-such-if0", "outbound-addr has to be valid ipv4 address or interface name"},
				{"--outbound-addr=" + outAddr6, "outbound-addr has to be valid ipv4 address or interface name"},
				// slirp4netns 1.2 says "outbound-addr has to be valid ipv4 address or iterface name." here.
				{"--outbound-addr6=no-such-if0", "has to be valid"},
				{"--outbound-addr6=" + outAddr4, "has to be valid"},
			} {
				cmd := asUser(exec.Command(b.path, tc.flag, pid, "tap0"))
				cmd.Dir = suite.dir
				p := startProc(t, cmd)
				t.Cleanup(p.stop)
				code := p.waitExit(t, 10*time.Second)
				if stderr := p.stderr.String(); code != 1 || !strings.Contains(stderr, tc.want) {
					t.Errorf("%s: exit status %d, stderr:\n%s\nwant 1 and %q", p.name, code, stderr, tc.want)
				}
				if b.usernet && strings.HasPrefix(tc.flag, "--outbound-addr6") {
					if want := "outbound-addr6 has to be valid ipv6 address or interface name"; !strings.Contains(p.stderr.String(), want) {
						t.Errorf("%s: stderr %q; want %q", p.name, p.stderr.String(), want)
					}
				}
			}
		})
	}
}

// --- 4. --version, --help ---

// TestParityVersionHelp: --version and -v print the three lines callers parse, --help and
// -h list every flag podman and rootlesskit probe for, all with exit status 0; every flag of
// slirp4netns's --help is in ours (but the hidden --target-type: docs/cli.md).
func TestParityVersionHelp(t *testing.T) {
	setup(t)
	t.Parallel()
	name := "usernet"
	if !suite.isUsernet {
		name = "slirp4netns"
	}
	for _, f := range []string{"--version", "-v"} {
		out, err := exec.Command(suite.bin, f).Output()
		if err != nil {
			t.Errorf("%s %s: %v; want exit status 0", suite.bin, f, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 3 || !strings.HasPrefix(lines[0], name+" version ") || !strings.HasPrefix(lines[1], "commit: ") ||
			!slices.Contains(lines, "SLIRP_CONFIG_VERSION_MAX: 4") {
			t.Errorf("%s %s printed:\n%s\nwant lines \"%s version X\", \"commit: Y\", ..., \"SLIRP_CONFIG_VERSION_MAX: 4\"", suite.bin, f, out, name)
		}
	}
	var help []byte
	for _, f := range []string{"--help", "-h"} {
		out, err := exec.Command(suite.bin, f).CombinedOutput()
		if err != nil {
			t.Errorf("%s %s: %v; want exit status 0", suite.bin, f, err)
		}
		help = out
	}
	for _, f := range []string{"--api-socket", "--enable-sandbox", "--enable-seccomp", "--outbound-addr", "--outbound-addr6", "--cidr"} {
		if !strings.Contains(string(help), f) {
			t.Errorf("%s --help does not list %s:\n%s", suite.bin, f, help)
		}
	}
	if p, err := exec.LookPath("slirp4netns"); err == nil && suite.isUsernet {
		ref, _ := exec.Command(p, "--help").CombinedOutput()
		for _, f := range regexp.MustCompile(`--[a-z0-9-]+`).FindAllString(string(ref), -1) {
			if f != "--target-type" && !regexp.MustCompile(regexp.QuoteMeta(f)+`\b([^-]|$)`).Match(help) {
				t.Errorf("slirp4netns --help lists %s, %s --help does not", f, suite.bin)
			}
		}
	}
}

// --- 5. output lines ---

// settingsKey is the part of a stdout line before its value: "* MTU:", "Starting slirp".
func settingsKey(l string) string {
	if strings.HasPrefix(l, "* ") {
		if k, _, ok := strings.Cut(l, ":"); ok {
			return k + ":"
		}
	}
	for _, p := range []string{"WARNING:", "seccomp:"} {
		if strings.HasPrefix(l, p) {
			return p
		}
	}
	return l
}

// usernetOnlyLines are the settings lines only usernet prints (docs/differences.md).
var usernetOnlyLines = []string{"* DNS upstream:", "* IPv6 network:"}

// experimentalWarning is what slirp4netns prints on stdout for -6, --outbound-addr and
// --outbound-addr6 before forking, so twice when stdout is not a terminal; usernet does not
// (docs/differences.md).
var experimentalWarning = regexp.MustCompile(`^WARNING: Support for [-a-zA-Z0-9]+ is experimental$`)

// TestParityOutput runs usernet and slirp4netns with the same flags and compares their
// output: the stderr lines about the tap fd, and the settings block on stdout line by line
// (values included; the API socket path normalized), but for the lines only usernet
// prints. Both end through the exit fd, so slirp4netns flushes its buffered stdout.
func TestParityOutput(t *testing.T) {
	setup(t)
	t.Parallel()
	bins := parityBins(t)
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"defaults", []string{"-c"}},
		{"cidr-mtu-ipv6", []string{"--configure", "--cidr=10.0.135.128/25", "--mtu=65520", "-6", "--disable-host-loopback", "-a", "SOCK"}},
		{"api-socket", []string{"-a", "SOCK"}},
		{"sandbox-seccomp", []string{"-c", "--enable-sandbox", "--enable-seccomp", "--api-socket=SOCK"}},
		{"outbound", []string{"-c", "-6", "--outbound-addr=127.0.0.1", "--outbound-addr6", "::1", "--api-socket=SOCK"}},
		{"outbound-ifname", []string{"--outbound-addr=lo", "--outbound-addr6=lo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			outs := map[string][]string{}
			for _, b := range bins {
				dir := userDir(t)
				sock := filepath.Join(dir, "api.sock")
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				tg := newTarget(t)
				var flags []string
				for _, f := range tc.flags {
					flags = append(flags, strings.ReplaceAll(f, "SOCK", sock))
				}
				u := startBin(t, tg, b, usernetOpts{flags: append(flags, "-e", "4"), extra: []*os.File{r}})
				r.Close()
				w.Close()
				if code := u.waitExit(t, 10*time.Second); code != 0 {
					t.Fatalf("%s: exit status %d after the exit fd closed; want 0", u.name, code)
				}
				stderr := u.stderr.String()
				for _, re := range []string{`(?m)^sent tapfd=[0-9]+ for tap0$`, `(?m)^received tapfd=[0-9]+$`} {
					if !regexp.MustCompile(re).MatchString(stderr) {
						t.Errorf("%s: stderr has no line matching %s:\n%s", b.name, re, stderr)
					}
				}
				var lines []string
				seccompLine := false
				for _, l := range strings.Split(u.stdout.String(), "\n") {
					if settingsKey(l) == "seccomp:" {
						// Different words for a different filter (docs/differences.md).
						seccompLine = true
						continue
					}
					if l == "" || slices.Contains(usernetOnlyLines, settingsKey(l)) || experimentalWarning.MatchString(l) {
						continue
					}
					lines = append(lines, strings.ReplaceAll(l, sock, "PATH"))
				}
				outs[b.name] = lines
				// The keys, in slirp4netns's order, whatever the other binary says.
				var keys []string
				for _, l := range lines {
					keys = append(keys, settingsKey(l))
				}
				want := []string{"Starting slirp", "* MTU:", "* Network:", "* Netmask:", "* Gateway:", "* DNS:",
					"* DHCP begin:", "* DHCP end:", "* Recommended IP:"}
				has := func(sub string) bool {
					return slices.ContainsFunc(tc.flags, func(f string) bool { return strings.Contains(f, sub) })
				}
				if has("SOCK") {
					want = append(want, "* API Socket:")
				}
				if has("--outbound-addr=") {
					want = append(want, "* Outbound IPv4:")
				}
				if has("--outbound-addr6") {
					want = append(want, "* Outbound IPv6:")
				}
				if seccompLine != has("--enable-seccomp") {
					t.Errorf("%s: a line \"seccomp: ...\" on stdout: %v; want %v", b.name, seccompLine, has("--enable-seccomp"))
				}
				if !slices.Contains(tc.flags, "--disable-host-loopback") {
					want = append(want, "WARNING:")
				}
				if !slices.Equal(keys, want) {
					t.Errorf("%s: stdout lines\n%s\nwant, in this order: %q", b.name, strings.Join(lines, "\n"), want)
				}
			}
			if ref, ok := outs["slirp4netns"]; ok && len(outs) == 2 {
				if got := outs["usernet"]; !slices.Equal(got, ref) {
					t.Errorf("stdout differs (usernet-only lines left out):\nusernet:\n%s\nslirp4netns:\n%s", strings.Join(got, "\n"), strings.Join(ref, "\n"))
				}
			}
		})
	}
}
