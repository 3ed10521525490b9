package nsjoin

import (
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/tap"
)

// A user and network namespace of their own (root only, as the broker's
// tests), so that OpenTap joins both.
func usernsTarget(t *testing.T) Target {
	return holdNamespace(t, "unshare", "--user", "--map-root-user", "--net", "sh", "-c", "echo up && exec sleep 60")
}

// inNS runs ip(8) in the target's namespaces.
func inNS(t *testing.T, tg Target, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-U", "-n", "-t", strconv.Itoa(tg.PID), "--preserve-credentials", "ip"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// The child joins the namespaces, makes the tap, configures it as asked
// and leaves its fds (non-blocking, close-on-exec) in ours.
func TestOpenTapConfigures(t *testing.T) {
	tg := usernsTarget(t)
	req := Request{
		Tap:       tap.Options{Name: "tap0", VnetHdr: true},
		Configure: true,
		ProcNet:   true,
		Config: tap.Config{
			MTU:      1400,
			Addrs:    []netip.Prefix{netip.MustParsePrefix("10.0.2.100/24"), netip.MustParsePrefix("fd00::100/64")},
			Gateway:  netip.MustParseAddr("10.0.2.2"),
			Gateway6: netip.MustParseAddr("fe80::2"),
		},
	}
	o, err := OpenTap(context.Background(), tg, req)
	if err != nil {
		t.Fatalf("OpenTap: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			o.Close()
		}
	}()
	for _, f := range append([]*os.File{o.Tap}, o.ProcNet...) {
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("%s: F_GETFD = %#x, %v: want close-on-exec", f.Name(), fl, err)
		}
	}
	if fl, _ := unix.FcntlInt(o.Tap.Fd(), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Errorf("tap fd is blocking")
	}
	if len(o.ProcNet) != len(ProcNetFiles) {
		t.Fatalf("%d /proc/net files, want %d", len(o.ProcNet), len(ProcNetFiles))
	}
	b, err := io.ReadAll(o.ProcNet[0])
	if err != nil || !strings.Contains(string(b), "local_address") {
		t.Errorf("/proc/net/tcp: %q, %v", b, err)
	}

	link := inNS(t, tg, "-o", "link", "show", "tap0")
	for _, want := range []string{"mtu 1400", "UP"} {
		if !strings.Contains(link, want) {
			t.Errorf("tap0: %q lacks %q", link, want)
		}
	}
	if lo := inNS(t, tg, "-o", "link", "show", "lo"); !strings.Contains(lo, "UP") {
		t.Errorf("lo is not up: %q", lo)
	}
	addrs := inNS(t, tg, "-o", "addr", "show", "dev", "tap0")
	for _, want := range []string{"inet 10.0.2.100/24 brd 10.0.2.255", "inet6 fd00::100/64 scope global nodad"} {
		if !strings.Contains(addrs, want) {
			t.Errorf("addresses %q lack %q", addrs, want)
		}
	}
	if r := inNS(t, tg, "route"); !strings.Contains(r, "default via 10.0.2.2 dev tap0") {
		t.Errorf("routes %q lack the default route", r)
	}
	if r := inNS(t, tg, "-6", "route"); !strings.Contains(r, "default via fe80::2 dev tap0") {
		t.Errorf("IPv6 routes %q lack the default route", r)
	}

	// Closed, the tap is gone. rootlesskit makes a persistent one
	// itself: OpenTap attaches to it and configures it the same way.
	o.Close()
	closed = true
	inNS(t, tg, "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr")
	o2, err := OpenTap(context.Background(), tg, req)
	if err != nil {
		t.Fatalf("OpenTap of an existing tap: %v", err)
	}
	o2.Close()
}

// Copied routes (pasta's): on the link first, then through a gateway,
// with the host's metric and protocol, one the kernel has already, and
// addresses without broadcast.
func TestOpenTapRoutes(t *testing.T) {
	tg := usernsTarget(t)
	req := Request{
		Tap:       tap.Options{Name: "eth0"},
		Configure: true,
		Config: tap.Config{
			Addrs:       []netip.Prefix{netip.MustParsePrefix("192.0.2.2/24"), netip.MustParsePrefix("fd00::2/64")},
			NoBroadcast: true,
			Routes: []netplan.Route{
				{Dst: netip.MustParsePrefix("198.51.100.0/24"), Gateway: netip.MustParseAddr("192.0.2.1"), Metric: 50},
				{Dst: netip.MustParsePrefix("192.0.2.0/24"), Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_LINK},
				// The kernel's own, exactly: EEXIST, which is no error.
				{Dst: netip.MustParsePrefix("fd00::/64"), Protocol: unix.RTPROT_KERNEL, Metric: 256},
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.1"), Protocol: unix.RTPROT_DHCP},
			},
		},
	}
	o, err := OpenTap(context.Background(), tg, req)
	if err != nil {
		t.Fatalf("OpenTap: %v", err)
	}
	defer o.Close()
	if a := inNS(t, tg, "-o", "addr", "show", "dev", "eth0"); !strings.Contains(a, "inet 192.0.2.2/24 scope global") || strings.Contains(a, "brd") {
		t.Errorf("address without broadcast: %q", a)
	}
	r := inNS(t, tg, "route")
	for _, want := range []string{"default via 192.0.2.1 dev eth0 proto dhcp", "198.51.100.0/24 via 192.0.2.1 dev eth0 metric 50"} {
		if !strings.Contains(r, want) {
			t.Errorf("routes %q lack %q", r, want)
		}
	}
}

// Every failure says what could not be done, as before the child was C,
// and leaves no fd behind.
func TestOpenTapErrors(t *testing.T) {
	tg := usernsTarget(t)
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"a device that is not a tap", Request{Tap: tap.Options{Name: "lo"}},
			"create tap lo: invalid argument (does a non-tap device of that name exist?)"},
		{"an unreachable gateway", Request{Tap: tap.Options{Name: "tap1"}, Configure: true, ProcNet: true, Config: tap.Config{
			Routes: []netplan.Route{{Dst: netip.MustParsePrefix("198.51.100.0/24"), Gateway: netip.MustParseAddr("203.0.113.1")}}}},
			"add route to 198.51.100.0/24 via 203.0.113.1 on tap1: network is unreachable"},
		{"an address the kernel refuses", Request{Tap: tap.Options{Name: "tap2"}, Configure: true, Config: tap.Config{
			Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.2.100/24")}, MTU: 100000}},
			"set mtu 100000 on tap2: invalid argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			o, err := OpenTap(context.Background(), tg, tc.req)
			if err == nil {
				o.Close()
				t.Fatal("OpenTap succeeded")
			}
			if want := tg.String() + ": " + tc.want; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			if after := openFDs(t); after != before {
				t.Errorf("%d fds open after the failure, %d before", after, before)
			}
		})
	}
	if _, err := OpenTap(context.Background(), Target{PID: 999999999}, Request{Tap: tap.Options{Name: "tap0"}}); err == nil ||
		err.Error() != "/proc/999999999/ns/net: no such process 999999999" {
		t.Errorf("OpenTap for a PID that does not exist: %v", err)
	}
}
