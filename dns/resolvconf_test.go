package dns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// twoUpstreams starts fake resolvers on 127.0.0.1 and 127.0.0.2 on the
// same port, as two nameservers in resolv.conf would be (port 53 for both).
func twoUpstreams(t *testing.T) (a, b *fakeUpstream) {
	t.Helper()
	for try := 0; try < 20; try++ {
		a := startFakeUpstream(t, "127.0.0.1")
		b, err := startFakeUpstreamOn(t, "127.0.0.2", int(a.addr.Port()))
		if err == nil {
			return a, b
		}
	}
	t.Skip("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}

// writeResolvConf replaces path with a file holding text, the way
// NetworkManager and systemd-resolved do it (a new file renamed over the
// old one: a new inode).
func writeResolvConf(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestForwarderFollowsResolvConf: with Config.ResolvConf, the upstream
// moves when the file changes (replaced or rewritten in place), over UDP
// and on a TCP client connection already open; a version of the file with
// no usable nameserver, one that Check refuses, and a missing file each
// leave it where it was, with one log line.
func TestForwarderFollowsResolvConf(t *testing.T) {
	checkGoroutineLeaks(t)
	a, b := twoUpstreams(t)
	path := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolvConf(t, path, "nameserver 127.0.0.1\n")
	refused := netip.MustParseAddr("127.0.0.9")
	h := startForwarder(t, "127.0.0.1", Config{
		Upstream:   a.addr,
		ResolvConf: path,
		Check: func(ap netip.AddrPort) error {
			if ap.Addr() == refused {
				return errors.New("refused by Check")
			}
			return nil
		},
	}, func(f *Forwarder) {
		f.follow.port = a.addr.Port()
		f.follow.every = 0 // look at every query
	})

	tcp := dialTCP(t, h.tcpAddr)
	var id uint16
	ask := func(want *fakeUpstream, step string) {
		t.Helper()
		id++
		udpA, udpB := a.udpQueries.Load(), b.udpQueries.Load()
		msg, err := udpExchange(h.udpAddr, query(t, id, "follow.test."), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: UDP query: %v", step, err)
		}
		wantReply(t, msg, id, "follow.test.")
		if want == a && a.udpQueries.Load() != udpA+1 || want == b && b.udpQueries.Load() != udpB+1 {
			t.Fatalf("%s: UDP query went to the wrong upstream (127.0.0.1: %d → %d, 127.0.0.2: %d → %d); want %v",
				step, udpA, a.udpQueries.Load(), udpB, b.udpQueries.Load(), want.addr)
		}
		tcpA, tcpB := a.tcpQueries.Load(), b.tcpQueries.Load()
		if err := writeMsg(tcp, query(t, id, "follow.test.")); err != nil {
			t.Fatalf("%s: write TCP query: %v", step, err)
		}
		msg, err = readMsg(tcp)
		if err != nil {
			t.Fatalf("%s: read TCP reply: %v", step, err)
		}
		wantReply(t, msg, id, "follow.test.")
		if want == a && a.tcpQueries.Load() != tcpA+1 || want == b && b.tcpQueries.Load() != tcpB+1 {
			t.Fatalf("%s: TCP query on the open connection went to the wrong upstream; want %v", step, want.addr)
		}
		if got := h.f.Upstream(); got != want.addr {
			t.Fatalf("%s: Upstream() = %v, want %v", step, got, want.addr)
		}
	}
	logged := func(step, substr string) {
		t.Helper()
		n := 0
		for _, l := range h.logs.get() {
			if strings.Contains(l, substr) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d log lines with %q, want 1; logs: %q", step, n, substr, h.logs.get())
		}
	}

	ask(a, "start")
	writeResolvConf(t, path, "# moved\nnameserver 127.0.0.2\nnameserver 127.0.0.1\n")
	ask(b, "replaced")
	logged("replaced", "upstream is now "+b.addr.String())

	writeResolvConf(t, path, "# no nameserver while reconnecting\n")
	ask(b, "no nameserver")
	ask(b, "no nameserver, asked again")
	logged("no nameserver", "no nameserver line")

	writeResolvConf(t, path, "nameserver 127.0.0.9\n")
	ask(b, "refused")
	logged("refused", "refused by Check")

	// In place: same inode, new size and times.
	if err := os.WriteFile(path, []byte("nameserver 127.0.0.1 # back\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ask(a, "rewritten in place")

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	ask(a, "removed")
	ask(a, "removed, asked again")
	logged("removed", "no such file")
}

// TestForwarderLooksAtResolvConfOncePerPeriod: between looks, a change of
// the file is not seen; without ResolvConf the file is never looked at.
func TestForwarderLooksAtResolvConfOncePerPeriod(t *testing.T) {
	a, b := twoUpstreams(t)
	path := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolvConf(t, path, "nameserver 127.0.0.1\n")
	for _, tt := range []struct {
		name       string
		resolvConf string
	}{{"following, first look done", path}, {"not following", ""}} {
		t.Run(tt.name, func(t *testing.T) {
			writeResolvConf(t, path, "nameserver 127.0.0.1\n")
			h := startForwarder(t, "127.0.0.1", Config{Upstream: a.addr, ResolvConf: tt.resolvConf}, func(f *Forwarder) {
				if f.follow != nil {
					f.follow.port = a.addr.Port()
					f.follow.every = time.Hour
				}
			})
			if _, err := udpExchange(h.udpAddr, query(t, 1, "one.test."), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			writeResolvConf(t, path, "nameserver 127.0.0.2\n")
			before := b.udpQueries.Load()
			if _, err := udpExchange(h.udpAddr, query(t, 2, "two.test."), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if b.udpQueries.Load() != before || h.f.Upstream() != a.addr {
				t.Errorf("the change was followed before the period was over (upstream %v)", h.f.Upstream())
			}
		})
	}
}
