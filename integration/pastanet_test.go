package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
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
	h, i := ownNetns(t, "cnh"), ownNetns(t, "cni")
	ip := func(args ...string) { t.Helper(); ipRun(t, args...) }
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

// ownNetns makes a network namespace for the test, with lo up and without
// duplicate address detection, removed at its end; it returns its name.
func ownNetns(t *testing.T, what string) string {
	t.Helper()
	ns := fmt.Sprintf("un-%s-%d", what, os.Getpid())
	ipRun(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ipRun(t, "-n", ns, "link", "set", "lo", "up")
	// pasta copies IPv6 only once the link-local address is usable.
	ipRun(t, "netns", "exec", ns, "sh", "-c", "for f in all default; do echo 0 > /proc/sys/net/ipv6/conf/$f/accept_dad; done")
	return ns
}

// ipRun runs ip(8) with args.
func ipRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestPastaExcludePorts: "-t ~25,~2000" forwards every port but 25, 2000 and the host's
// ephemeral ones, as pasta does: a server inside on a low and on a high port is reached
// from the host, and port 2000, like an ephemeral one, stays free on the host. The host
// netns is the test's own, with a wide ephemeral range (10000-65000), so that the ports
// (9 510) fit the machine's file limit (RLIMIT_NOFILE 20000 here: with Linux's default range,
// 37 302 ports, the real pasta fails "Can't open enough sockets"); ports below 1024 are
// privileged for the unprivileged peers, which skip them.
func TestPastaExcludePorts(t *testing.T) {
	root := needTrixie(t)
	ctx := testContext(t, 2*time.Minute)
	h, i := ownNetns(t, "exh"), ownNetns(t, "exi")
	ipRun(t, "-n", h, "link", "add", "ex0", "type", "veth", "peer", "name", "exp0", "netns", i)
	ipRun(t, "-n", h, "addr", "add", "198.51.100.1/24", "dev", "ex0")
	ipRun(t, "-n", h, "addr", "add", "2001:db8::1/64", "dev", "ex0", "nodad")
	ipRun(t, "-n", i, "addr", "add", "198.51.100.254/24", "dev", "exp0")
	ipRun(t, "-n", i, "addr", "add", "2001:db8::254/64", "dev", "exp0", "nodad")
	ipRun(t, "-n", h, "link", "set", "ex0", "up")
	ipRun(t, "-n", i, "link", "set", "exp0", "up")
	ipRun(t, "-n", h, "route", "add", "default", "via", "198.51.100.254")
	ipRun(t, "-n", h, "-6", "route", "add", "default", "via", "2001:db8::254")
	ipRun(t, "netns", "exec", h, "sh", "-c", "echo '10000 65000' > /proc/sys/net/ipv4/ip_local_port_range")

	const low, high, excluded, ephemeral = 1500, 65100, 2000, 30000
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			peer := newPastaPeer(t, root, name)
			www := shortUserDir(t, "ex-")
			if err := os.WriteFile(www+"/index.html", []byte("hello from inside\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			script := fmt.Sprintf("busybox httpd -f -p %d -h %s & a=$!; busybox httpd -f -p %d -h %s & b=$!; read x; kill $a $b",
				low, www, high, www)
			args := append([]string{"netns", "exec", h, trixieExec, root.dir, "--user", testUser, "--"},
				peer.bin, "--config-net", "-t", "~25,~2000", "-u", "none", "-T", "none", "-U", "none", "--", "sh", "-c", script)
			cmd := exec.CommandContext(ctx, "ip", args...)
			cmd.Env = []string{rootPath}
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				stdin.Close()
				if err := cmd.Wait(); err != nil {
					t.Logf("pasta: %v; stderr:\n%s", err, stderr.String())
				}
			}()
			get := func(addr string) (string, error) {
				var c net.Conn
				err := inNetns("/run/netns/"+h, func() (err error) {
					c, err = net.DialTimeout("tcp", addr, 2*time.Second)
					return err
				})
				if err != nil {
					return "", err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
				b, err := io.ReadAll(c)
				return string(b), err
			}
			for _, addr := range []string{
				fmt.Sprintf("127.0.0.1:%d", low), fmt.Sprintf("198.51.100.1:%d", high),
				fmt.Sprintf("[::1]:%d", high), fmt.Sprintf("[2001:db8::1]:%d", low),
			} {
				var body string
				var err error
				for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					if body, err = get(addr); err == nil && strings.Contains(body, "hello from inside") {
						break
					}
				}
				if !strings.Contains(body, "hello from inside") {
					t.Fatalf("GET http://%s/ from the host: %q, %v; pasta's stderr:\n%s", addr, body, err, stderr.String())
				}
			}
			// Excluded and ephemeral ports stay free on the host; the others are taken.
			for _, c := range []struct {
				port int
				free bool
			}{{excluded, true}, {ephemeral, true}, {excluded + 1, false}, {high - 1, false}} {
				var ln net.Listener
				err := inNetns("/run/netns/"+h, func() (err error) {
					ln, err = net.Listen("tcp", fmt.Sprintf(":%d", c.port))
					return err
				})
				if err == nil {
					ln.Close()
				}
				if (err == nil) != c.free {
					t.Errorf("listen on the host's port %d: %v; want it free: %v", c.port, err, c.free)
				}
			}
			// What the ports cost.
			out, _ := exec.Command("ip", "netns", "pids", h).Output()
			for _, pid := range strings.Fields(string(out)) {
				comm, _ := os.ReadFile("/proc/" + pid + "/comm")
				if !strings.HasPrefix(string(comm), "pasta") {
					continue
				}
				fds, _ := os.ReadDir("/proc/" + pid + "/fd")
				status, _ := os.ReadFile("/proc/" + pid + "/status")
				rss := regexp.MustCompile(`VmRSS:\s+(\d+ kB)`).FindStringSubmatch(string(status))
				threads := regexp.MustCompile(`Threads:\s+(\d+)`).FindStringSubmatch(string(status))
				if len(rss) > 1 && len(threads) > 1 {
					t.Logf("%s (PID %s): %d descriptors, RSS %s, %s threads", strings.TrimSpace(string(comm)), pid, len(fds), rss[1], threads[1])
				}
			}
		})
	}
}
