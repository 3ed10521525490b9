package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const defaultTimeout = 90 * time.Second

// hostHashServer starts a hash server on the host's 127.0.0.1 and returns its port.
func hostHashServer(t *testing.T) (string, <-chan hashReply) {
	ln := listenTCP(t, "127.0.0.1:0")
	return port(ln.Addr()), hashServer(t, ln)
}

// dnsUpstream returns the flags that point the binary under test at a DNS server this test
// controls, and the A record that server gives for any name under usernet.test.
// slirp4netns has no --dns-upstream: it relays to /etc/resolv.conf's 127.0.0.53 (netns.sh).
func dnsUpstream(t *testing.T) (flags []string, answer string) {
	if !suite.isUsernet {
		return nil, resolvAnswer
	}
	s := startDNS(t, "198.51.100.99")
	return []string{"--dns-upstream", s.addr}, "198.51.100.99"
}

func checkDNS(t *testing.T, tg *target, server, proto, typ, name string, want []string) {
	t.Helper()
	ctx := testContext(t, 30*time.Second)
	var res DNSResult
	tg.helper(t, ctx, &res, "dns", server, proto, typ, name)
	if res.Err != "" || res.RCode != "RCodeSuccess" || !slices.Equal(res.Answers, want) {
		t.Fatalf("dns %s %s %s %s: got %+v; want rcode RCodeSuccess, answers %q", server, proto, typ, name, res, want)
	}
}

func checkPing(t *testing.T, tg *target, addr string) {
	t.Helper()
	var res PingResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "ping", addr)
	if !res.OK {
		t.Fatalf("ping %s from the namespace: %+v; want a reply", addr, res)
	}
}

func checkDial(t *testing.T, tg *target, addr, want string) {
	t.Helper()
	var res DialResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "dial", addr)
	if res.Err != want {
		t.Fatalf("connect to %s from the namespace: error %q; want %q", addr, res.Err, want)
	}
}

// TestConfigure checks what --configure sets up, right after the ready fd said "1" (no
// polling: the ready fd must not fire before the tap is configured), and that the gateway
// of the configured network reaches the host's loopback.
func TestConfigure(t *testing.T) {
	setup(t)
	t.Parallel()
	for _, tc := range []struct {
		name    string
		flags   []string
		addr    string // on tap0
		gateway string // default route
		mtu     int
		mac     string // "" = don't care
	}{
		{"defaults", []string{"-c"}, "10.0.2.100/24", "10.0.2.2", 1500, ""},
		{"mtu-and-mac", []string{"--configure", "--mtu=65520", "--macaddress", "02:00:5e:00:53:01"}, "10.0.2.100/24", "10.0.2.2", 65520, "02:00:5e:00:53:01"},
		{"cidr", []string{"-c", "--cidr", "10.0.135.128/25"}, "10.0.135.228/25", "10.0.135.130", 1500, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, defaultTimeout)
			tg := newTarget(t)
			startUsernet(t, tg, usernetOpts{flags: tc.flags})

			links := tg.links(t, ctx)
			tap, ok := links["tap0"]
			if !ok {
				t.Fatalf("after ready: no tap0 in the namespace; links %v", links)
			}
			if !tap.up() || !slices.Contains(tap.addrs(), tc.addr) || tap.MTU != tc.mtu {
				t.Errorf("after ready: tap0 flags %v, addresses %v, mtu %d; want UP, %s, mtu %d", tap.Flags, tap.addrs(), tap.MTU, tc.addr, tc.mtu)
			}
			if tc.mac != "" && tap.Address != tc.mac {
				t.Errorf("tap0 MAC address %s; want %s", tap.Address, tc.mac)
			}
			if lo := links["lo"]; !lo.up() || !slices.Contains(lo.addrs(), "127.0.0.1/8") {
				t.Errorf("lo flags %v, addresses %v; want UP with 127.0.0.1/8", lo.Flags, lo.addrs())
			}
			var routes []ipRoute
			tg.ipJSON(t, ctx, &routes, "route", "show")
			if !slices.Contains(routes, ipRoute{Dst: "default", Gateway: tc.gateway, Dev: "tap0"}) {
				t.Errorf("routes %+v; want default via %s dev tap0", routes, tc.gateway)
			}

			p, got := hostHashServer(t)
			checkTCPUp(t, ctx, tg, net.JoinHostPort(tc.gateway, p), 1<<20, got)
		})
	}
}

// TestRunAsRoot runs the binary as root (as some callers do) for one basic exchange.
func TestRunAsRoot(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}, asRoot: true})
	p, got := hostHashServer(t)
	checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
}

// TestExistingTap does what rootlesskit does: create and configure tap0 itself, and start
// the binary without --configure to attach to it.
func TestExistingTap(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	tg.nsenter(t, ctx, "ip", "tuntap", "add", "name", "tap0", "mode", "tap")
	tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "up")
	startUsernet(t, tg, usernetOpts{flags: []string{"--mtu=1500"}})
	tg.nsenter(t, ctx, "ip", "addr", "add", "10.0.2.100/24", "dev", "tap0")
	tg.nsenter(t, ctx, "ip", "route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
	p, got := hostHashServer(t)
	checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
}

// TestNetnsTypePath joins the namespaces by path (--netns-type=path, --userns-path), as
// podman does, both through /proc and through bind-mounted namespace files.
func TestNetnsTypePath(t *testing.T) {
	setup(t)
	t.Parallel()
	for _, bind := range []bool{false, true} {
		name := map[bool]string{false: "proc", true: "bind-mount"}[bind]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, defaultTimeout)
			tg := newTarget(t)
			netPath := fmt.Sprintf("/proc/%d/ns/net", tg.pid)
			userPath := fmt.Sprintf("/proc/%d/ns/user", tg.pid)
			if bind {
				dir := userDir(t)
				netPath, userPath = bindNs(t, netPath, filepath.Join(dir, "net")), bindNs(t, userPath, filepath.Join(dir, "user"))
			}
			startUsernet(t, tg, usernetOpts{
				flags:      []string{"-c", "--netns-type=path", "--userns-path=" + userPath},
				positional: []string{netPath, "tap0"},
			})
			p, got := hostHashServer(t)
			checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
		})
	}
}

func bindNs(t *testing.T, src, dst string) string {
	t.Helper()
	if err := os.WriteFile(dst, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("mount --bind %s %s: %v", src, dst, err)
	}
	t.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH) })
	return dst
}

// TestTCPHostLoopback: 10.0.2.2 reaches the host's 127.0.0.1; the client half-closes and
// still gets the reply; a closed port is refused.
func TestTCPHostLoopback(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	t.Run("half-close", func(t *testing.T) {
		p, got := hostHashServer(t)
		checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 3<<20+17, got)
	})
	t.Run("refused", func(t *testing.T) {
		checkDial(t, tg, "10.0.2.2:"+closedPort(t), "ECONNREFUSED")
	})
}

// TestTCPLargeTransfer sends 1 GiB (64 MiB with -short) through the gateway to an echo server
// on the host's loopback and back, both directions at once, checked by sha256: at MTU 65520,
// at MTU 1500 over IPv4 and IPv6 (with the tap's offloads on, both sides move 64 KiB GSO
// segments whatever the MTU: a wrong virtio-net header corrupts or stalls exactly this), and
// without the offloads (USERNET_DEBUG_NO_OFFLOAD in the usernet_debug build, the plain-frame
// path: the guest's tap queue overflows and drops segments, which the direct path must
// recover from quickly). Each on the direct TCP path (the default, stack/tcpdirect.go) and
// on gVisor's (USERNET_DIRECT_TCP=0). gVisor's without offloads is the regression test for
// the carried gVisor patch 0001 (docs/design.md, "Carried gVisor patches"): unpatched,
// gVisor refuses the ACKs that arrive while its window is closed and this echo stalls for
// good in about one run in four.
func TestTCPLargeTransfer(t *testing.T) {
	setup(t)
	usernetOnly(t, "the tap's vnet_hdr")
	t.Parallel()
	n := int64(longTransfer)
	if testing.Short() {
		n = shortTransfer
	}
	for _, tc := range []struct {
		name    string
		mtu     string
		ipv6    bool
		offload bool
		gvisor  bool // USERNET_DIRECT_TCP=0: gVisor's TCP, not the direct path
	}{
		{"mtu65520", "65520", false, true, false},
		{"mtu1500-ipv6", "1500", true, true, false},
		{"mtu1500-no-offload", "1500", false, false, false},
		{"mtu65520-gvisor", "65520", false, true, true},
		{"mtu1500-gvisor", "1500", false, true, true},
		{"mtu1500-ipv6-gvisor", "1500", true, true, true},
		{"mtu1500-no-offload-gvisor", "1500", false, false, true},
	} {
		// One at a time: four 1 GiB transfers at once on two cores starve
		// each other. A transfer takes 3–11 s; two minutes is a stall.
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 2*time.Minute)
			tg := newTarget(t)
			opts := usernetOpts{flags: []string{"-c", "--mtu=" + tc.mtu}}
			if tc.ipv6 {
				opts.flags = append(opts.flags, "--enable-ipv6")
			}
			if !tc.offload {
				opts.env, opts.debug = append(opts.env, "USERNET_DEBUG_NO_OFFLOAD=1"), true
			}
			if tc.gvisor {
				opts.env = append(opts.env, "USERNET_DIRECT_TCP=0")
			}
			startUsernet(t, tg, opts)
			if got := tg.vnetHdr(t, ctx, "tap0"); got != tc.offload {
				t.Errorf("tap0 vnet_hdr = %v, want %v", got, tc.offload)
			}
			ln, gw := listenTCP(t, "127.0.0.1:0"), "10.0.2.2"
			if tc.ipv6 {
				waitSLAAC(t, ctx, tg)
				ln, gw = listenTCP(t, "[::1]:0"), "fd00::2"
			}
			echoServer(t, ln)
			var res TCPResult
			tg.helper(t, ctx, &res, "tcp-echo", net.JoinHostPort(gw, port(ln.Addr())), strconv.FormatInt(n, 10))
			if res.Err != "" || res.Sent != n || res.Recv != n || res.RecvSHA != res.SentSHA {
				t.Fatalf("tcp-echo %d bytes via %s: %+v; want %d bytes each way, same sha256, no error", n, gw, res, n)
			}
			t.Logf("%d bytes each way in %s (%d Mbit/s both directions together)", n, res.Duration, res.Mbps)
		})
	}
}

// TestFakeInternet reaches a host outside the machine (here: the fake-internet netns) by
// address, over TCP, UDP and ICMP.
func TestFakeInternet(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	t.Run("tcp", func(t *testing.T) {
		ln := inetListenTCP(t, "[::]:0")
		got := hashServer(t, ln)
		checkTCPUp(t, ctx, tg, net.JoinHostPort(suite.inet4, port(ln.Addr())), 1<<20, got)
	})
	t.Run("udp", func(t *testing.T) {
		pc := inetListenUDP(t, "[::]:0")
		udpEchoServer(t, pc)
		checkUDP(t, tg, net.JoinHostPort(suite.inet4, port(pc.LocalAddr())), 20)
	})
	t.Run("ping", func(t *testing.T) {
		checkPing(t, tg, suite.inet4)
	})
}

func checkUDP(t *testing.T, tg *target, addr string, flows int) {
	t.Helper()
	var res UDPResult
	tg.helper(t, testContext(t, 60*time.Second), &res, "udp-echo", addr, strconv.Itoa(flows))
	if res.OK != flows {
		t.Fatalf("udp-echo %s with %d flows: %d echoed; failures: %q", addr, flows, res.OK, res.Failed)
	}
}

// TestUDPManyFlows sends from 200 source ports at once to a UDP echo server on the host's
// loopback through 10.0.2.2.
func TestUDPManyFlows(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	pc := listenUDP(t, "127.0.0.1:0")
	udpEchoServer(t, pc)
	checkUDP(t, tg, "10.0.2.2:"+port(pc.LocalAddr()), 200)
}

// TestUDPReplyFromOtherPort: a datagram from another port of the host the namespace talks
// to reaches it (a TFTP server answers from a new port; slirp4netns passes these), from the
// gateway's address, and the namespace's answer to that port leaves from the same host
// address and port as its first datagram.
func TestUDPReplyFromOtherPort(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	a, b := listenUDP(t, "127.0.0.1:0"), listenUDP(t, "127.0.0.1:0")
	seen := make(chan net.Addr, 1)
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := a.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "hello" {
				a.WriteTo([]byte("from a"), from)
				b.WriteTo([]byte("from b"), from)
				select {
				case seen <- from:
				default:
				}
			}
		}
	}()
	var res UDPTalkResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "udp-talk", "10.0.2.2:"+port(a.LocalAddr()), "2")
	want := map[string]string{"10.0.2.2:" + port(a.LocalAddr()): "from a", "10.0.2.2:" + port(b.LocalAddr()): "from b"}
	if !maps.Equal(res.Replies, want) {
		t.Fatalf("the namespace received %v; want %v", res.Replies, want)
	}
	guest := <-seen
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, from, err := b.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "answer" || from.String() != guest.String() {
		t.Errorf("b read %q from %v (%v); want \"answer\" from %v, where the namespace's first datagram came from", buf[:n], from, err, guest)
	}
}

// TestUDPPortUnreachable: a datagram to a closed UDP port fails the namespace's socket with
// ECONNREFUSED, as on a real network: the ICMP port unreachable the host's kernel gets is
// relayed. Through the fake internet (slirp4netns does the same) and to the gateway
// (slirp4netns stays silent: docs/differences.md), IPv4 and IPv6.
func TestUDPPortUnreachable(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-ipv6"}})
	closedUDP := func(t *testing.T, listen func(*testing.T, string) net.PacketConn, addr string) string {
		pc := listen(t, addr)
		p := port(pc.LocalAddr())
		pc.Close()
		return p
	}
	check := func(t *testing.T, addr string) {
		var res DialResult
		tg.helper(t, testContext(t, 30*time.Second), &res, "udp-send", addr)
		if res.Err != "ECONNREFUSED" {
			t.Errorf("udp-send %s (a closed port): read error %q, want ECONNREFUSED", addr, res.Err)
		}
	}
	t.Run("internet", func(t *testing.T) {
		check(t, net.JoinHostPort(suite.inet4, closedUDP(t, inetListenUDP, "[::]:0")))
	})
	t.Run("internet-ipv6", func(t *testing.T) {
		waitSLAAC(t, testContext(t, 30*time.Second), tg)
		check(t, net.JoinHostPort(suite.inet6, closedUDP(t, inetListenUDP, "[::]:0")))
	})
	t.Run("gateway", func(t *testing.T) {
		usernetOnly(t, "ICMP errors from the host's loopback")
		check(t, "10.0.2.2:"+closedUDP(t, listenUDP, "127.0.0.1:0"))
	})
	t.Run("gateway-ipv6", func(t *testing.T) {
		usernetOnly(t, "ICMP errors from the host's loopback")
		waitSLAAC(t, testContext(t, 30*time.Second), tg)
		check(t, "[fd00::2]:"+closedUDP(t, listenUDP, "[::1]:0"))
	})
}

// TestTCPHostUnreachable: a connection to an address the host cannot reach (on the fake
// internet's link, nobody answers ARP/NDP for it) fails in the namespace with EHOSTUNREACH,
// from the ICMP error usernet sends for the host's failed connect; slirp4netns lets the
// namespace's SYNs time out.
func TestTCPHostUnreachable(t *testing.T) {
	setup(t)
	usernetOnly(t, "ICMP host unreachable for a failed host connect")
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-ipv6"}})
	// An unassigned address on the fake internet's link: its host .77 (::77).
	a4, a6 := netip.MustParseAddr(suite.inet4).As4(), netip.MustParseAddr(suite.inet6).As16()
	a4[3], a6[15] = 77, 0x77
	t.Run("ipv4", func(t *testing.T) {
		checkDial(t, tg, netip.AddrPortFrom(netip.AddrFrom4(a4), 80).String(), "EHOSTUNREACH")
	})
	t.Run("ipv6", func(t *testing.T) {
		waitSLAAC(t, testContext(t, 30*time.Second), tg)
		checkDial(t, tg, netip.AddrPortFrom(netip.AddrFrom16(a6), 80).String(), "EHOSTUNREACH")
	})
}

// TestPingGateway pings 10.0.2.2.
func TestPingGateway(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	checkPing(t, tg, "10.0.2.2")
}

// TestDNS: 10.0.2.3 relays UDP and TCP queries to --dns-upstream on the host's loopback;
// a big answer comes over TCP and is truncated over UDP.
func TestDNS(t *testing.T) {
	setup(t)
	usernetOnly(t, "--dns-upstream")
	t.Parallel()
	s := startDNS(t, "198.51.100.42")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--dns-upstream", s.addr}})
	checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "a.usernet.test", []string{"198.51.100.42"})
	checkDNS(t, tg, "10.0.2.3:53", "tcp", "A", "b.usernet.test", []string{"198.51.100.42"})
	checkDNS(t, tg, "10.0.2.3:53", "tcp", "TXT", "big.usernet.test", []string{fmt.Sprintf("txt:%d", bigTXT)})
	var res DNSResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "dns", "10.0.2.3:53", "udp", "TXT", "big.usernet.test")
	if !res.TC {
		t.Errorf("dns 10.0.2.3:53 udp TXT big.usernet.test: %+v; want the TC bit (the answer is %d bytes)", res, bigTXT)
	}
	var nx DNSResult
	tg.helper(t, testContext(t, 30*time.Second), &nx, "dns", "10.0.2.3:53", "udp", "A", "nonexistent.example")
	if nx.RCode != "RCodeNameError" {
		t.Errorf("dns 10.0.2.3:53 udp A nonexistent.example: %+v; want RCodeNameError relayed from upstream", nx)
	}
	if seen := s.seen(); len(seen) < 5 {
		t.Errorf("upstream %s saw %q; want the 5 queries", s.addr, seen)
	}
}

// TestDNSResolvConf: without --dns-upstream, 10.0.2.3 relays to the first nameserver of
// /etc/resolv.conf, here a loopback address (127.0.0.53, netns.sh), which must work.
func TestDNSResolvConf(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}, noDNSFlag: true})
	checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "resolvconf.usernet.test", []string{resolvAnswer})
}

// TestDNSFollowsResolvConf: the upstream follows the resolv.conf it came from, as
// slirp4netns's does (libslirp re-reads /etc/resolv.conf when it changes): a host that
// changes networks rewrites it, and the namespace must then ask the new resolver. Here the
// file (--resolv-conf, a usernet flag; slirp4netns was compared by hand on a bind-mounted
// /etc/resolv.conf) is replaced as NetworkManager does, by a rename, then emptied, which
// keeps the upstream. Also with both sandbox flags, as podman passes them: the sandbox
// shows the file's directory and the seccomp filter lets it be read.
func TestDNSFollowsResolvConf(t *testing.T) {
	setup(t)
	usernetOnly(t, "--resolv-conf")
	t.Parallel()
	const moved = "198.51.100.54"
	second, err := newDNSServer("127.0.0.54", "53", net.ParseIP(moved), nil, sameNetns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	for _, tt := range []struct {
		name  string
		flags []string
	}{
		{"plain", nil},
		{"sandbox-seccomp", []string{"--enable-sandbox", "--enable-seccomp"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(userDir(t), "resolv.conf")
			replace := func(text string) {
				t.Helper()
				if err := os.WriteFile(path+".new", []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(path+".new", path); err != nil {
					t.Fatal(err)
				}
			}
			replace("nameserver " + suite.resolvNS + "\n")
			tg := newTarget(t)
			u := startUsernet(t, tg, usernetOpts{flags: append([]string{"-c", "--resolv-conf", path}, tt.flags...), noDNSFlag: true})
			checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "before.usernet.test", []string{resolvAnswer})

			replace("# another network\nnameserver 127.0.0.54\n")
			// The file is looked at once a second, on a query.
			deadline := time.Now().Add(10 * time.Second)
			for {
				var res DNSResult
				tg.helper(t, testContext(t, 30*time.Second), &res, "dns", "10.0.2.3:53", "udp", "A", "after.usernet.test")
				if slices.Equal(res.Answers, []string{moved}) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("10 s after resolv.conf moved to 127.0.0.54, 10.0.2.3 still answers %+v; want %s\nstderr:\n%s", res, moved, u.stderr.String())
				}
				time.Sleep(200 * time.Millisecond)
			}
			checkDNS(t, tg, "10.0.2.3:53", "tcp", "A", "tcp.usernet.test", []string{moved})

			replace("# reconnecting\n")
			time.Sleep(1200 * time.Millisecond) // past the next look
			checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "kept.usernet.test", []string{moved})
			// The lines were written before those answers; the harness copies them over
			// a pipe, so give it a moment.
			reported := func() bool {
				e := u.stderr.String()
				return strings.Contains(e, "usernet: dns: upstream is now 127.0.0.54:53") && strings.Contains(e, "no nameserver line")
			}
			for end := time.Now().Add(5 * time.Second); !reported() && time.Now().Before(end); {
				time.Sleep(50 * time.Millisecond)
			}
			if !reported() {
				t.Errorf("stderr does not report the move and the empty file:\n%s", u.stderr.String())
			}
		})
	}
}

// TestDisableHostLoopback: connecting to 10.0.2.2 fails with ENETUNREACH (not refused, not
// a timeout) and reaches nothing, neither the host's loopback nor the network; ping to
// 10.0.2.2 and DNS through a loopback upstream still work.
func TestDisableHostLoopback(t *testing.T) {
	setup(t)
	t.Parallel()
	dnsFlags, answer := dnsUpstream(t)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: append([]string{"-c", "--disable-host-loopback"}, dnsFlags...)})

	// A listener on the host's loopback, and a leak catcher on the same port in the fake
	// internet (which owns 10.0.2.2 too).
	inet := inetListenTCP(t, "[::]:0")
	p := port(inet.Addr())
	host := listenTCP(t, "127.0.0.1:"+p)
	var accepted atomic.Int32
	for _, ln := range []net.Listener{host, inet} {
		serveTCP(t, ln, func(c *net.TCPConn) { accepted.Add(1) })
	}
	checkDial(t, tg, "10.0.2.2:"+p, "ENETUNREACH")
	if n := accepted.Load(); n != 0 {
		t.Errorf("connect to 10.0.2.2:%s: %d connections accepted on the host's 127.0.0.1 or the network; want 0", p, n)
	}
	checkPing(t, tg, "10.0.2.2")
	checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "dhl.usernet.test", []string{answer})
}

// TestDisableDNS: with --disable-dns, 10.0.2.3:53 answers nothing, and the queries go
// nowhere: not to the upstream, not to the network.
func TestDisableDNS(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns 1.2 sends .3:53 to the host network with --disable-dns")
	t.Parallel()
	// No --dns-upstream (usernet refuses it with --disable-dns): the upstream would be
	// resolv.conf's 127.0.0.53, the suite's server, which other tests query too; so this
	// test's queries carry a name of their own.
	name := fmt.Sprintf("disabled-%d.usernet.test", time.Now().UnixNano())
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--disable-dns"}, noDNSFlag: true})
	for _, proto := range []string{"udp", "tcp"} {
		var res DNSResult
		tg.helper(t, testContext(t, 30*time.Second), &res, "dns", "10.0.2.3:53", proto, "A", name)
		if res.Err == "" {
			t.Errorf("dns 10.0.2.3:53 %s A %s with --disable-dns: answered %+v; want no answer", proto, name, res)
		}
	}
	for _, s := range []struct {
		what string
		srv  *dnsServer
	}{{"the resolv.conf upstream " + resolvDNS.addr, resolvDNS}, {"the fake internet's port 53", honeypot}} {
		for _, q := range s.srv.seen() {
			if strings.Contains(q, name) {
				t.Errorf("with --disable-dns, %s got the query %q; want nothing sent anywhere", s.what, q)
			}
		}
	}
}

// waitSLAAC waits up to 15 s for a usable (not tentative) SLAAC address in fd00::/64 on tap0
// and returns it.
func waitSLAAC(t *testing.T, ctx context.Context, tg *target) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, a := range tg.links(t, ctx)["tap0"].AddrInfo {
			if a.Family == "inet6" && a.PrefixLen == 64 && strings.HasPrefix(a.Local, "fd00::") && !a.Tentative {
				return a.Local
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no usable SLAAC address in fd00::/64 on tap0 after 15s; tap0: %+v", tg.links(t, ctx)["tap0"])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestIPv6: --enable-ipv6 gives a SLAAC address in fd00::/64 within seconds; [fd00::2]
// reaches the host's [::1]; the fake internet is reachable over IPv6; DNS at [fd00::3].
func TestIPv6(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	dnsFlags, answer := dnsUpstream(t)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: append([]string{"-c", "--enable-ipv6"}, dnsFlags...)})

	t.Logf("SLAAC address %s", waitSLAAC(t, ctx, tg))

	t.Run("host-loopback", func(t *testing.T) {
		ln := listenTCP(t, "[::1]:0")
		checkTCPUp(t, ctx, tg, "[fd00::2]:"+port(ln.Addr()), 1<<20, hashServer(t, ln))
	})
	t.Run("internet", func(t *testing.T) {
		ln := inetListenTCP(t, "[::]:0")
		checkTCPUp(t, ctx, tg, net.JoinHostPort(suite.inet6, port(ln.Addr())), 1<<20, hashServer(t, ln))
	})
	t.Run("dns", func(t *testing.T) {
		usernetOnly(t, "slirp4netns answers at fd00::3 only with an IPv6 nameserver in resolv.conf")
		checkDNS(t, tg, "[fd00::3]:53", "udp", "A", "v6.usernet.test", []string{answer})
	})
}

// TestExitFD: closing the write end of -e FD makes the binary exit 0 promptly, and remove
// its API socket.
func TestExitFD(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	flags, sock := apiSocketFlags(t)
	u := startUsernet(t, tg, usernetOpts{flags: append([]string{"-c", "-e", "4"}, flags...), extra: []*os.File{r}})
	r.Close()
	checkAPISocket(t, sock, true)
	if u.exited() {
		t.Fatalf("%s exited before the exit fd closed: %v", u.name, u.err)
	}
	w.Close()
	if code := u.waitExit(t, 5*time.Second); code != 0 {
		t.Fatalf("%s: exit status %d after the exit fd closed; want 0\nstderr:\n%s", u.name, code, u.stderr.String())
	}
	checkAPISocket(t, sock, false)
}

// apiSocketFlags returns --api-socket PATH in a directory of the unprivileged user, if the
// binary has that flag (usernet hides it until it implements it).
func apiSocketFlags(t *testing.T) (flags []string, path string) {
	if !suite.hasAPISocket {
		t.Log("no --api-socket in --help: not checking the API socket's removal")
		return nil, ""
	}
	path = filepath.Join(userDir(t), "api.sock")
	return []string{"--api-socket", path}, path
}

func checkAPISocket(t *testing.T, path string, exists bool) {
	t.Helper()
	if path == "" {
		return
	}
	_, err := os.Stat(path)
	if exists && err != nil {
		t.Errorf("API socket %s after ready: %v; want it to exist", path, err)
	}
	if !exists && !os.IsNotExist(err) {
		t.Errorf("API socket %s after exit: %v; want it removed", path, err)
	}
}

// TestTargetExit: when the target process dies, usernet exits by itself (slirp4netns
// keeps running until killed).
func TestTargetExit(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns 1.2 does not exit when its target dies")
	t.Parallel()
	tg := newTarget(t)
	u := startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	tg.kill()
	if code := u.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("%s: exit status %d after the target died; want 0 (docs/cli.md)\nstderr:\n%s", u.name, code, u.stderr.String())
	}
}

// TestSIGTERM: SIGTERM, and SIGINT, make the binary exit 0, remove its API socket, and leave
// no process behind (the slirp4netns command line catches them without os/signal:
// cmd/usernet/stopsig.c).
func TestSIGTERM(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns 1.2 dies of SIGTERM (no handler) and leaves its API socket behind")
	t.Parallel()
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			t.Parallel()
			tg := newTarget(t)
			flags, sock := apiSocketFlags(t)
			mark := fmt.Sprintf("USERNET_TEST_MARK=%d-%d", os.Getpid(), time.Now().UnixNano())
			u := startUsernet(t, tg, usernetOpts{flags: append([]string{"-c"}, flags...), env: []string{mark}})
			checkAPISocket(t, sock, true)
			u.cmd.Process.Signal(sig)
			if code := u.waitExit(t, 5*time.Second); code != 0 {
				t.Errorf("%s: exit status %d after %v; want 0\nstderr:\n%s", u.name, code, sig, u.stderr.String())
			}
			checkAPISocket(t, sock, false)
			if left := processesWithEnv(mark); len(left) > 0 {
				t.Errorf("processes left after %s exited: %v", u.name, left)
			}
		})
	}
}

// processesWithEnv lists the processes whose environment contains kv.
func processesWithEnv(kv string) []string {
	var found []string
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		env, err := os.ReadFile(p + "/environ")
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(env), "\x00"), kv) {
			cmdline, _ := os.ReadFile(p + "/cmdline")
			found = append(found, fmt.Sprintf("%s (%s)", filepath.Base(p), strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return found
}

// TestRun: `usernet run -- CMD` makes its own namespaces, in which CMD reaches a loopback
// server through 10.0.2.2 and resolves through 10.0.2.3 via its own resolv.conf; usernet
// exits with CMD's status.
func TestRun(t *testing.T) {
	setup(t)
	usernetOnly(t, "the run subcommand")
	t.Parallel()
	run := func(t *testing.T, args ...string) *proc {
		cmd := asUser(exec.Command(suite.bin, append([]string{"run"}, args...)...))
		cmd.Dir = suite.dir
		p := startProc(t, cmd)
		t.Cleanup(p.stop)
		return p
	}
	t.Run("network", func(t *testing.T) {
		t.Parallel()
		s := startDNS(t, "198.51.100.44")
		p, got := hostHashServer(t)
		pr := run(t, "--dns-upstream", s.addr, "--", "sh", "-c", `USERNET_TEST_HELPER=1 exec "$0" runcheck "$1" "$2"`,
			suite.helper, "10.0.2.2:"+p, "run.usernet.test")
		code := pr.waitExit(t, 60*time.Second)
		out := pr.stdout.String()
		if code != 7 {
			t.Fatalf("%s: exit status %d; want 7 (the command's)\nstdout: %s\nstderr: %s", pr.name, code, out, pr.stderr.String())
		}
		var res RunCheck
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s: output %q: %v", pr.name, out, err)
		}
		if res.TCP == nil || res.TCP.Err != "" || res.TCP.Reply != fmt.Sprintf("%d %s\n", res.TCP.Sent, res.TCP.SentSHA) {
			t.Errorf("in `usernet run`: TCP to 10.0.2.2:%s: %+v; want the hash server's reply", p, res.TCP)
		}
		select {
		case <-got:
		default:
			t.Errorf("in `usernet run`: the host's hash server on 127.0.0.1:%s saw no connection", p)
		}
		if !slices.Equal(res.ResolvNS, []string{"10.0.2.3"}) {
			t.Errorf("in `usernet run`: /etc/resolv.conf nameservers %q; want [10.0.2.3]", res.ResolvNS)
		}
		if !slices.Equal(res.Lookup, []string{"198.51.100.44"}) {
			t.Errorf("in `usernet run`: lookup run.usernet.test = %q, %s; want [198.51.100.44]", res.Lookup, res.LookErr)
		}
	})
	t.Run("exit-status", func(t *testing.T) {
		t.Parallel()
		pr := run(t, "--", "sh", "-c", "exit 3")
		if code := pr.waitExit(t, 30*time.Second); code != 3 {
			t.Fatalf("%s: exit status %d; want 3\nstderr: %s", pr.name, code, pr.stderr.String())
		}
	})
}

// TestBadInput: bad arguments make the binary exit non-zero at once, with an error whose
// first line names the problem (slirp4netns's wording where it has one).
func TestBadInput(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	pid := strconv.Itoa(tg.pid)
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	gonePID := strconv.Itoa(gone.Process.Pid)
	for _, tc := range []struct {
		name string
		args []string
		want string // in the first line of stderr
		// why only usernet must reject it ("" = slirp4netns rejects it too)
		usernetOnly string
	}{
		{"unknown-flag", []string{"--no-such-flag", pid, "tap0"}, "no-such-flag", ""},
		{"cidr-syntax", []string{"--cidr=10.0.2.0/x", pid, "tap0"}, "invalid CIDR", ""},
		{"cidr-host-address", []string{"--cidr=10.0.2.100/24", pid, "tap0"}, "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24", ""},
		{"cidr-prefix", []string{"--cidr=10.0.0.0/26", pid, "tap0"}, "prefix length needs to be 1-25", ""},
		{"no-such-pid", []string{"-c", gonePID, "tap0"}, gonePID, ""},
		{"tap-name-too-long", []string{"-c", pid, "tap0123456789abcdef"}, "tap0123456789abcdef",
			"slirp4netns 1.2 silently truncates the name to 15 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.usernetOnly != "" {
				usernetOnly(t, tc.usernetOnly)
			}
			p := checkFails(t, asUser(exec.Command(suite.bin, tc.args...)), tc.want)
			if stderr := p.stderr.String(); suite.isUsernet && !strings.HasPrefix(stderr, "usernet: ") {
				t.Errorf("%s: stderr %q; want it to start with \"usernet: \" (docs/cli.md)", p.name, stderr)
			}
		})
	}
}

// TestHelpVersion: --help lists the flags rootlesskit and podman probe for; -v prints the
// SLIRP_CONFIG_VERSION_MAX line test suites parse.
func TestHelpVersion(t *testing.T) {
	setup(t)
	t.Parallel()
	help, err := exec.Command(suite.bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", suite.bin, err, help)
	}
	// rootlesskit refuses a binary without --netns-type; it and podman probe for the others and
	// leave out what is missing (--api-socket, --enable-sandbox and --enable-seccomp may be
	// missing while usernet lacks them: docs/cli.md).
	for _, f := range []string{"--netns-type", "--enable-ipv6", "--cidr", "--disable-host-loopback", "--mtu",
		"--outbound-addr", "--userns-path", "--disable-dns", "--macaddress"} {
		if !strings.Contains(string(help), f) {
			t.Errorf("%s --help does not mention %s (callers probe for it)", suite.bin, f)
		}
	}
	version, err := exec.Command(suite.bin, "-v").CombinedOutput()
	if err != nil || !strings.Contains(string(version), "SLIRP_CONFIG_VERSION_MAX: ") {
		t.Errorf("%s -v: %v\n%s\nwant exit 0 and a line SLIRP_CONFIG_VERSION_MAX: N", suite.bin, err, version)
	}
}

// TestVirtualNetworkNotProxied: traffic for an unused address of the virtual network
// (10.0.2.50) is not proxied to that address on the host's network. The fake
// internet owns 10.0.2.0/24 (netns.sh) and listens on the port: nothing may arrive there.
// A static neighbour entry (the gateway's MAC) makes the namespace send the packets.
func TestVirtualNetworkNotProxied(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns 1.2 proxies other addresses of its virtual network to the host's network")
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	checkPing(t, tg, "10.0.2.2")
	var neigh []struct {
		LLAddr string `json:"lladdr"`
	}
	tg.ipJSON(t, ctx, &neigh, "neigh", "show", "10.0.2.2", "dev", "tap0")
	if len(neigh) != 1 || neigh[0].LLAddr == "" {
		t.Fatalf("ip neigh show 10.0.2.2 after a ping: %+v; want the gateway's MAC", neigh)
	}
	tg.nsenter(t, ctx, "ip", "neigh", "replace", "10.0.2.50", "lladdr", neigh[0].LLAddr, "dev", "tap0", "nud", "permanent")
	ln := inetListenTCP(t, "[::]:0")
	var accepted atomic.Int32
	serveTCP(t, ln, func(c *net.TCPConn) { accepted.Add(1) })
	pc := inetListenUDP(t, "[::]:0")
	var received atomic.Int32
	tr := newTracker(t, pc)
	tr.wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	})

	tcpAddr := "10.0.2.50:" + port(ln.Addr())
	var dial DialResult
	tg.helper(t, testContext(t, 30*time.Second), &dial, "dial", tcpAddr)
	if dial.Err == "" {
		t.Errorf("connect to %s from the namespace succeeded; want an error", tcpAddr)
	}
	udpAddr := "10.0.2.50:" + port(pc.LocalAddr())
	var udp UDPResult
	tg.helper(t, testContext(t, 30*time.Second), &udp, "udp-echo", udpAddr, "1")
	if n, m := accepted.Load(), received.Load(); n != 0 || m != 0 {
		t.Errorf("the fake internet accepted %d connections for %s and got %d datagrams for %s; want none", n, tcpAddr, m, udpAddr)
	}
	t.Logf("connect to %s: %s", tcpAddr, dial.Err)
}
