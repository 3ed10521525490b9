package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// acceptCounter serves ln, counting the connections it accepts: a denied
// destination's counter must stay 0 (nothing reached it).
func acceptCounter(t *testing.T, ln net.Listener) *atomic.Int32 {
	var n atomic.Int32
	serveTCP(t, ln, func(*net.TCPConn) { n.Add(1) })
	return &n
}

// TestEgressRules: --deny and --deny-host rules deny new flows with ICMP
// administratively prohibited (EHOSTUNREACH inside, at once), nothing
// reaches the denied destination, other flows go through; rules added and
// removed over the API apply to the next flows. Sandbox and seccomp on.
func TestEgressRules(t *testing.T) {
	setup(t)
	usernetOnly(t, "egress policy")
	t.Parallel()
	denied := inetListenTCP(t, "[::]:0")
	allowed := inetListenTCP(t, "[::]:0")
	deniedN, allowedN := acceptCounter(t, denied), acceptCounter(t, allowed)
	udpDenied := inetListenUDP(t, "[::]:0")
	udpEchoServer(t, udpDenied)
	udpAllowed := inetListenUDP(t, "[::]:0")
	udpEchoServer(t, udpAllowed)
	host := listenTCP(t, "127.0.0.1:0")
	hostN := acceptCounter(t, host)

	inet := func(a net.Addr) string { return net.JoinHostPort(suite.inet4, port(a)) }
	sock := filepath.Join(shortUserDir(t, "eg"), "api.sock")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-sandbox", "--enable-seccomp", "--api-socket", sock,
		"--deny", "tcp:" + suite.inet4 + ":" + port(denied.Addr()),
		"--deny", "udp:" + suite.inet4 + ":" + port(udpDenied.LocalAddr()),
		"--deny-host",
	}})

	start := time.Now()
	checkDial(t, tg, inet(denied.Addr()), "EHOSTUNREACH")
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the denied connect took %v; want it refused at once", el)
	}
	checkDial(t, tg, inet(allowed.Addr()), "")
	checkDial(t, tg, "10.0.2.2:"+port(host.Addr()), "EHOSTUNREACH")
	var res DialResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "udp-send", inet(udpDenied.LocalAddr()))
	if res.Err != "EHOSTUNREACH" {
		t.Errorf("udp-send to the denied port: %q, want EHOSTUNREACH", res.Err)
	}
	checkUDP(t, tg, inet(udpAllowed.LocalAddr()), 3)
	checkPing(t, tg, suite.inet4)

	// At runtime, over the API (as the user: the sandboxed usernet refuses root): deny the
	// allowed port before everything, then remove it.
	reply, err := apiUserExchange(t, sock, fmt.Sprintf(`{"execute":"add_rule","arguments":{"rule":{"action":"deny","proto":"tcp","dst":%q,"ports":%q},"before":1}}`,
		suite.inet4, port(allowed.Addr())))
	if err != nil || reply != `{"return":{"id":4,"killed":0}}` {
		t.Fatalf("add_rule: %q, %v", reply, err)
	}
	checkDial(t, tg, inet(allowed.Addr()), "EHOSTUNREACH")
	list, _ := apiUserExchange(t, sock, `{"execute":"list_rules"}`)
	if !strings.HasPrefix(list, `{"return":{"default":"allow","rules":[{"id":4,`) || !strings.Contains(list, `"preset":"host"`) {
		t.Errorf("list_rules: %s", list)
	}
	if reply, err := apiUserExchange(t, sock, `{"execute":"remove_rule","arguments":{"id":4}}`); err != nil || reply != `{"return":{}}` {
		t.Fatalf("remove_rule: %q, %v", reply, err)
	}
	checkDial(t, tg, inet(allowed.Addr()), "")

	time.Sleep(100 * time.Millisecond) // let the servers count what reached them
	if n := deniedN.Load(); n != 0 {
		t.Errorf("the denied destination accepted %d connections", n)
	}
	if n := hostN.Load(); n != 0 {
		t.Errorf("the host's loopback accepted %d connections under --deny-host", n)
	}
	if n := allowedN.Load(); n != 2 {
		t.Errorf("the allowed destination accepted %d connections, want 2", n)
	}
}

// TestEgressDomains: with --allow-domain only the addresses the DNS
// forwarder resolved for that domain are reachable; other names are
// refused without reaching the upstream; DNS to anywhere else is denied.
func TestEgressDomains(t *testing.T) {
	setup(t)
	usernetOnly(t, "egress policy")
	t.Parallel()
	dns := startDNS(t, suite.inet4)
	ln := inetListenTCP(t, "[::]:0")
	acceptCounter(t, ln)
	addr := net.JoinHostPort(suite.inet4, port(ln.Addr()))
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-sandbox", "--enable-seccomp", "--dns-upstream", dns.addr,
		"--allow-domain", "ok.usernet.test"}})

	checkDial(t, tg, addr, "EHOSTUNREACH") // nothing resolved yet: the default is deny
	var res DNSResult
	tg.helper(t, testContext(t, 30*time.Second), &res, "dns", "10.0.2.3:53", "udp", "A", "other.usernet.test")
	if res.RCode != "RCodeRefused" {
		t.Errorf("a name outside the allowed domain: %+v, want REFUSED", res)
	}
	for _, q := range dns.seen() {
		if strings.Contains(q, "other.usernet.test") {
			t.Errorf("the upstream saw a refused name: %q", q)
		}
	}
	checkDNS(t, tg, "10.0.2.3:53", "tcp", "A", "www.ok.usernet.test", []string{suite.inet4})
	checkDial(t, tg, addr, "")
	// DNS around the forwarder is denied, even to an allowed address.
	var udp DialResult
	tg.helper(t, testContext(t, 30*time.Second), &udp, "udp-send", net.JoinHostPort(suite.inet4, "53"))
	if udp.Err != "EHOSTUNREACH" {
		t.Errorf("DNS to the allowed address directly: %q, want EHOSTUNREACH", udp.Err)
	}
}

// TestEgressRuleStorm: thousands of rules, and thousands of rule changes
// over the API while a transfer runs: every call is answered, the
// transfer arrives whole, and new connections still go through.
func TestEgressRuleStorm(t *testing.T) {
	setup(t)
	usernetOnly(t, "egress policy")
	t.Parallel()
	sock := filepath.Join(shortUserDir(t, "st"), "api.sock")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--api-socket", sock, "--deny", "192.0.2.1"}})
	const rules = 3000
	p, got := hostHashServer(t)
	done := make(chan struct{})
	var calls, slowest atomic.Int64
	go func() {
		defer close(done)
		for i := range rules {
			start := time.Now()
			req := fmt.Sprintf(`{"execute":"add_rule","arguments":{"rule":{"action":"deny","proto":"tcp","dst":"203.0.%d.%d","ports":"%d"}}}`, i/256, i%256, 1+i%65535)
			reply, err := apiExchange(sock, req, 10*time.Second)
			if err != nil || !strings.HasPrefix(reply, `{"return":{"id":`) {
				t.Errorf("add_rule %d: %q, %v", i, reply, err)
				return
			}
			calls.Add(1)
			if d := time.Since(start); int64(d) > slowest.Load() {
				slowest.Store(int64(d))
			}
		}
	}()
	start := time.Now()
	checkTCPUp(t, testContext(t, 2*time.Minute), tg, "10.0.2.2:"+p, 256<<20, got)
	transfer := time.Since(start)
	<-done
	t.Logf("%d add_rule calls during a 256 MiB upload (%v); slowest call %v", calls.Load(), transfer.Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Microsecond))
	list, err := apiExchange(sock, `{"execute":"list_rules"}`, 10*time.Second)
	if err != nil || strings.Count(list, `"id":`) != rules+1 {
		t.Errorf("list_rules after the storm: %d rules, %v", strings.Count(list, `"id":`), err)
	}
	// With 3001 rules, a connection is still decided at once.
	start = time.Now()
	checkDial(t, tg, "10.0.2.2:"+p, "")
	checkDial(t, tg, "192.0.2.1:80", "EHOSTUNREACH")
	t.Logf("two connects with %d rules: %v", rules+1, time.Since(start).Round(time.Millisecond))
}

// TestEgressPresetIPv6Kill: --deny-private covers the host's own
// addresses; IPv6 rules deny with ICMPv6 administratively prohibited
// (EACCES inside); add_rule with kill_existing resets a live connection
// that the new rule denies.
func TestEgressPresetIPv6Kill(t *testing.T) {
	setup(t)
	usernetOnly(t, "egress policy")
	t.Parallel()
	hostAddr := os.Getenv("USERNET_HOST4")
	hostLn := listenTCP(t, net.JoinHostPort(hostAddr, "0"))
	hostN := acceptCounter(t, hostLn)
	denied6 := inetListenTCP(t, "[::]:0")
	denied6N := acceptCounter(t, denied6)
	allowed := inetListenTCP(t, "[::]:0")
	acceptCounter(t, allowed)
	held := inetListenTCP(t, "[::]:0")
	heldConn := make(chan struct{}, 1)
	release := make(chan struct{})
	serveTCP(t, held, func(c *net.TCPConn) {
		heldConn <- struct{}{}
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
	})
	defer close(release)

	sock := filepath.Join(shortUserDir(t, "pk"), "api.sock")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-ipv6", "--api-socket", sock,
		"--deny-private", "--deny", "tcp:[" + suite.inet6 + "]:" + port(denied6.Addr())}})
	waitSLAAC(t, testContext(t, 30*time.Second), tg)

	checkDial(t, tg, net.JoinHostPort(hostAddr, port(hostLn.Addr())), "EHOSTUNREACH")
	checkDial(t, tg, net.JoinHostPort(suite.inet6, port(denied6.Addr())), "EACCES")
	checkDial(t, tg, net.JoinHostPort(suite.inet6, port(allowed.Addr())), "")
	checkDial(t, tg, net.JoinHostPort(suite.inet4, port(allowed.Addr())), "")

	// A live upload, then a rule that denies it, with kill_existing.
	heldAddr := net.JoinHostPort(suite.inet4, port(held.Addr()))
	res := make(chan TCPResult, 1)
	go func() {
		var r TCPResult
		tg.helper(t, testContext(t, time.Minute), &r, "tcp-up", heldAddr, "1000")
		res <- r
	}()
	select {
	case <-heldConn:
	case <-time.After(10 * time.Second):
		t.Fatal("the held connection never arrived")
	}
	// The host's side accepts before the namespace's handshake completes;
	// the flow is live once list_connections shows it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if l, _ := apiExchange(sock, `{"execute":"list_connections"}`, 10*time.Second); strings.Contains(l, heldAddr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("list_connections never showed the held connection")
		}
	}
	reply, err := apiExchange(sock, fmt.Sprintf(`{"execute":"add_rule","arguments":{"rule":{"action":"deny","proto":"tcp","dst":%q,"ports":%q},"kill_existing":true}}`,
		suite.inet4, port(held.Addr())), 10*time.Second)
	if err != nil || !strings.HasSuffix(reply, `"killed":1}}`) {
		t.Fatalf("add_rule with kill_existing: %q, %v", reply, err)
	}
	select {
	case r := <-res:
		if !strings.Contains(r.Err, "ECONNRESET") {
			t.Errorf("the killed upload: %+v, want ECONNRESET", r)
		}
	case <-time.After(15 * time.Second):
		t.Error("the killed upload did not end")
	}
	time.Sleep(100 * time.Millisecond)
	if n := hostN.Load() + denied6N.Load(); n != 0 {
		t.Errorf("denied destinations accepted %d connections", n)
	}
}
