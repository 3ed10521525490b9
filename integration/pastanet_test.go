package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPastaConfigNet: --config-net copies every address and every route of the template
// interface, as the real pasta does, and the copies work: a server on a second network of
// the host, and one behind a router of an extra route, are reached from the namespace
// through them, from the same client address as with pasta.
//
// The suite's host netns is shared with other tests, so this one makes a host of its own:
// netns H with uplink cn0 (two addresses of each family, routes through two routers) wired
// to netns I holding the routers and the servers. The peers run in H with no target
// (new namespaces running a script that prints what it sees).
func TestPastaConfigNet(t *testing.T) {
	root := needTrixie(t)
	ctx := testContext(t, 2*time.Minute)
	h, i := fmt.Sprintf("un-cnh-%d", os.Getpid()), fmt.Sprintf("un-cni-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{h, i} {
		ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		ip("-n", ns, "link", "set", "lo", "up")
		// No duplicate address detection: pasta copies IPv6 only once the
		// link-local address is usable.
		ip("netns", "exec", ns, "sh", "-c", "for f in all default; do echo 0 > /proc/sys/net/ipv6/conf/$f/accept_dad; done")
	}
	ip("-n", h, "link", "add", "cn0", "type", "veth", "peer", "name", "cnp0", "netns", i)
	for _, a := range []struct{ ns, addr, dev string }{
		{h, "198.51.100.1/24", "cn0"}, {h, "203.0.113.5/24", "cn0"},
		{h, "2001:db8::1/64", "cn0"}, {h, "2001:db8:5::1/64", "cn0"},
		{i, "198.51.100.254/24", "cnp0"}, {i, "198.51.100.253/24", "cnp0"}, {i, "203.0.113.254/24", "cnp0"},
		{i, "2001:db8::254/64", "cnp0"}, {i, "2001:db8::253/64", "cnp0"}, {i, "2001:db8:5::254/64", "cnp0"},
		{i, "10.9.0.1/32", "lo"}, {i, "2001:db8:9::1/128", "lo"},
	} {
		ip("-n", a.ns, "addr", "add", a.addr, "dev", a.dev, "nodad")
	}
	ip("-n", h, "link", "set", "cn0", "up")
	ip("-n", i, "link", "set", "cnp0", "up")
	ip("-n", h, "route", "add", "default", "via", "198.51.100.254")
	ip("-n", h, "route", "add", "10.9.0.0/16", "via", "198.51.100.253")
	ip("-n", h, "route", "add", "10.8.0.0/16", "dev", "cn0")
	ip("-n", h, "-6", "route", "add", "default", "via", "2001:db8::254")
	ip("-n", h, "-6", "route", "add", "2001:db8:9::/48", "via", "2001:db8::253")

	// Not the gateways: they reach the host's loopback (no --no-map-gw).
	// The servers answer with the client's address.
	var ln net.Listener
	if err := inNetns("/run/netns/"+i, func() (err error) {
		ln, err = net.Listen("tcp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, host)
	}))
	p := port(ln.Addr())
	servers := []struct{ url, from string }{
		{"http://203.0.113.254:" + p + "/", "203.0.113.5"}, // the second network
		{"http://10.9.0.1:" + p + "/", "198.51.100.1"},     // behind the extra route's router
		{"http://[2001:db8:5::254]:" + p + "/", "2001:db8:5::1"},
		{"http://[2001:db8:9::1]:" + p + "/", ""}, // the source is the kernel's choice: the same for both
	}
	script := "ip -j addr show dev cn0; echo @@; ip -j -4 route; echo @@; ip -j -6 route"
	for _, s := range servers {
		script += "; echo @@; busybox wget -q -T 10 -O - " + s.url
	}

	type view struct{ addrs, routes4, routes6 string }
	seen := map[string]view{}
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			peer := newPastaPeer(t, root, name)
			args := append([]string{"netns", "exec", h, trixieExec, root.dir, "--user", testUser, "--"},
				peer.bin, "--config-net", "--", "sh", "-c", script)
			cmd := exec.CommandContext(ctx, "ip", args...)
			cmd.Env = []string{rootPath}
			out, err := cmd.Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("pasta --config-net: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
			}
			parts := strings.Split(string(out), "@@\n")
			if len(parts) != 3+len(servers) {
				t.Fatalf("output:\n%s\nwant %d parts", out, 3+len(servers))
			}
			v := view{addrs: globalAddrs(t, parts[0]), routes4: strings.TrimSpace(parts[1]), routes6: strings.TrimSpace(parts[2])}
			t.Logf("addresses: %s\nIPv4 routes: %s\nIPv6 routes: %s", v.addrs, v.routes4, v.routes6)
			for _, w := range []string{`"local":"198.51.100.1"`, `"local":"203.0.113.5"`, `"local":"2001:db8::1"`, `"local":"2001:db8:5::1"`} {
				if !strings.Contains(v.addrs, w) {
					t.Errorf("the namespace's addresses lack %s", w)
				}
			}
			for _, w := range []string{`"dst":"10.9.0.0/16","gateway":"198.51.100.253"`, `"dst":"10.8.0.0/16","dev":"cn0","scope":"link"`} {
				if !strings.Contains(v.routes4, w) {
					t.Errorf("the namespace's IPv4 routes lack %s", w)
				}
			}
			if w := `"dst":"2001:db8:9::/48","gateway":"2001:db8::253"`; !strings.Contains(v.routes6, w) {
				t.Errorf("the namespace's IPv6 routes lack %s", w)
			}
			for k, s := range servers {
				got := strings.TrimSpace(parts[3+k])
				if s.from == "" {
					if got == "" {
						t.Errorf("%s: no answer", s.url)
					}
					v.addrs += " " + s.url + " from " + got
					continue
				}
				if got != s.from {
					t.Errorf("%s: the server saw the client at %q, want %s", s.url, got, s.from)
				}
			}
			seen[name] = v
		})
	}
	a, b := seen["pasta-2025"], seen["usernet"]
	if a != (view{}) && b != (view{}) && a != b {
		t.Errorf("usernet's namespace differs from pasta's:\npasta:   %+v\nusernet: %+v", a, b)
	}
}

// globalAddrs returns the non-link-local addresses of `ip -j addr show dev X`, as JSON
// without lifetimes (the link-local one is the kernel's own, random).
func globalAddrs(t *testing.T, js string) string {
	t.Helper()
	var links []struct {
		AddrInfo []map[string]any `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(js), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j addr: %v: %s", err, js)
	}
	var keep []map[string]any
	for _, a := range links[0].AddrInfo {
		if a["scope"] == "link" {
			continue
		}
		delete(a, "valid_life_time")
		delete(a, "preferred_life_time")
		keep = append(keep, a)
	}
	b, _ := json.Marshal(keep)
	return string(b)
}
