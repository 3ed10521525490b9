package policy

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func mustRule(t *testing.T, a Action, spec string) Rule {
	t.Helper()
	r, err := ParseRule(a, spec)
	if err != nil {
		t.Fatalf("ParseRule(%q): %v", spec, err)
	}
	return r
}

func TestParseRule(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{"10.0.0.0/8", "deny 10.0.0.0/8"},
		{"tcp:10.0.0.0/8:22", "deny tcp:10.0.0.0/8:22"},
		{"udp:192.0.2.1:1000-2000", "deny udp:192.0.2.1/32:1000-2000"},
		{"2001:db8::/32", "deny 2001:db8::/32"},
		{"tcp:2001:db8::1", "deny tcp:2001:db8::1/128"},
		{"tcp:[2001:db8::/32]:443", "deny tcp:[2001:db8::/32]:443"},
		{"[::1]", "deny ::1/128"},
		{"icmp:any", "deny icmp:0.0.0.0/0,::/0"},
		{"any:*:53", "deny [0.0.0.0/0,::/0]:53"},
		{"10.0.0.0/8,192.168.0.0/16", "deny 10.0.0.0/8,192.168.0.0/16"},
		{"::ffff:10.0.0.0/104", "deny 10.0.0.0/8"},
	} {
		r, err := ParseRule(Deny, c.spec)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", c.spec, err)
			continue
		}
		if got := r.String(); got != c.want {
			t.Errorf("ParseRule(%q) = %q, want %q", c.spec, got, c.want)
		}
		// The string form parses back to the same rule.
		back, err := ParseRule(Deny, strings.TrimPrefix(r.String(), "deny "))
		if err != nil || back.String() != r.String() {
			t.Errorf("round trip of %q: %v, %v", r.String(), back, err)
		}
	}
}

func TestParseRuleErrors(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{"", "no destination"},
		{"tcp:", "no destination"},
		{"10.0.0.1/8", "host bits set"},
		{"10.0.0.0/33", "bad prefix"},
		{"tcp:10.0.0.0/8:0", "bad port"},
		{"tcp:10.0.0.0/8:65536", "bad port"},
		{"tcp:10.0.0.0/8:99-3", "reversed"},
		{"tcp:10.0.0.0/8:", "empty port range"},
		{"icmp:10.0.0.0/8:22", "no ports"},
		{"[2001:db8::", "missing ']'"},
		{"[2001:db8::]x", "want ':PORTS'"},
		{"example.org", "bad address"},
		{"fe80::1%eth0", "bad address"},
		{"10.0.0.0/8,", "bad address"},
	} {
		_, err := ParseRule(Allow, c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRule(%q) = %v, want an error with %q", c.spec, err, c.want)
		}
	}
}

func TestRuleJSON(t *testing.T) {
	for _, in := range []string{
		`{"action":"deny","proto":"tcp","dst":"10.0.0.0/8","ports":"22"}`,
		`{"action":"allow","dst":["192.0.2.0/24","2001:db8::/32"]}`,
		`{"action":"deny","preset":"private"}`,
		`{"action":"allow","domain":"example.org"}`,
		`{"action":"allow","proto":"udp","ports":"53-60","domain":"example.org"}`,
	} {
		var r Rule
		if err := json.Unmarshal([]byte(in), &r); err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		out, err := json.Marshal(r)
		if err != nil || string(out) != in {
			t.Errorf("%s → %s, %v", in, out, err)
		}
	}
	for _, c := range []struct{ in, want string }{
		{`{"action":"maybe","dst":"any"}`, "unknown action"},
		{`{"action":"deny"}`, "exactly one"},
		{`{"action":"deny","dst":"any","preset":"host"}`, "exactly one"},
		{`{"action":"deny","preset":"cloud"}`, "unknown preset"},
		{`{"action":"deny","domain":"-x.org"}`, "bad domain"},
		{`{"action":"deny","domain":"a..b"}`, "bad domain"},
		{`{"action":"deny","dst":3}`, "string or a list"},
		{`{"action":"deny","dst":[3]}`, "string or a list"},
		{`{"action":"deny","dst":"any","port":"3"}`, "unknown field"},
		{`{"action":"deny","dst":"any","proto":"sctp"}`, "unknown protocol"},
		{`{"action":"deny","dst":"any","proto":"icmp","ports":"1"}`, "no ports"},
	} {
		var r Rule
		err := json.Unmarshal([]byte(c.in), &r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.in, err, c.want)
		}
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestFirstMatchWins(t *testing.T) {
	p, err := New(Config{Default: Deny, Rules: []Rule{
		mustRule(t, Deny, "tcp:192.0.2.7:443"),
		mustRule(t, Allow, "tcp:192.0.2.0/24:400-500"),
		mustRule(t, Allow, "udp:192.0.2.0/24"),
		mustRule(t, Deny, "192.0.2.0/25"),
		mustRule(t, Allow, "192.0.0.0/16"),
		mustRule(t, Allow, "icmp:2001:db8::/32"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		proto Proto
		dst   string
		allow bool
		id    int
	}{
		{TCP, "192.0.2.7:443", false, 1},
		{TCP, "192.0.2.8:443", true, 2},
		{TCP, "192.0.2.8:80", false, 4},
		{UDP, "192.0.2.8:80", true, 3},
		{ICMP, "192.0.2.8:0", false, 4},
		{ICMP, "192.0.2.200:0", true, 5},
		{TCP, "192.0.3.1:1", true, 5},
		{TCP, "198.51.100.1:1", false, 0},
		{ICMP, "[2001:db8::1]:0", true, 6},
		{TCP, "[2001:db8::1]:80", false, 0},
		{TCP, "[::ffff:192.0.2.7]:443", false, 1}, // mapped addresses are unmapped
	} {
		v := p.Check(c.proto, ap(c.dst))
		if v.Allow != c.allow || v.RuleID != c.id {
			t.Errorf("Check(%v, %s) = %+v, want allow %v by rule %d", c.proto, c.dst, v, c.allow, c.id)
		}
	}
}

func TestPresets(t *testing.T) {
	host := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1")}
	p, err := New(Config{Default: Allow, HostAddrs: host, Rules: []Rule{
		{Action: Deny, Preset: PresetPrivate},
		{Action: Deny, Preset: PresetHost, Proto: TCP, Ports: Ports{22, 22}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[string]int{
		"10.1.2.3:80": 1, "172.31.0.1:80": 1, "172.32.0.1:80": 0, "192.168.1.1:80": 1,
		"100.64.0.1:80": 1, "169.254.169.254:80": 1, "[fd00::1]:80": 1, "[fe80::1]:80": 1,
		"198.51.100.1:80": 1, "[2001:db8::1]:80": 1, "[2001:db8::2]:80": 0,
		"127.0.0.1:22": 2, "127.0.0.1:80": 0, "[::1]:22": 2, "192.0.2.1:80": 0,
	} {
		v := p.Check(TCP, ap(dst))
		if v.RuleID != want || v.Allow != (want == 0) {
			t.Errorf("Check(%s) = %+v, want rule %d", dst, v, want)
		}
	}
}

func TestAddRemove(t *testing.T) {
	p, _ := New(Config{Default: Allow})
	id1, err := p.Add(mustRule(t, Deny, "192.0.2.0/24"), 0)
	if err != nil || id1 != 1 {
		t.Fatalf("Add = %d, %v", id1, err)
	}
	id2, _ := p.Add(mustRule(t, Allow, "192.0.2.1"), id1) // before rule 1
	if v := p.Check(TCP, ap("192.0.2.1:1")); !v.Allow || v.RuleID != id2 {
		t.Errorf("after insert before: %+v", v)
	}
	if l := p.List(); len(l) != 2 || l[0].ID != id2 || l[1].ID != id1 {
		t.Errorf("List = %+v", l)
	}
	if _, err := p.Add(mustRule(t, Allow, "192.0.2.1"), 99); err == nil {
		t.Error("Add before a missing id worked")
	}
	if _, err := p.Add(Rule{Action: Deny}, 0); err == nil {
		t.Error("Add of an invalid rule worked")
	}
	if err := p.Remove(id2); err != nil {
		t.Fatal(err)
	}
	if v := p.Check(TCP, ap("192.0.2.1:1")); v.Allow || v.RuleID != id1 {
		t.Errorf("after remove: %+v", v)
	}
	if err := p.Remove(id2); err == nil {
		t.Error("second Remove worked")
	}
	p.SetDefault(Deny)
	if v := p.Check(TCP, ap("198.51.100.1:1")); v.Allow {
		t.Errorf("after SetDefault(Deny): %+v", v)
	}
	// Ids are never reused.
	if id3, _ := p.Add(mustRule(t, Allow, "any"), 0); id3 != 3 {
		t.Errorf("third id = %d", id3)
	}
}

func TestDomains(t *testing.T) {
	p, err := New(Config{Default: Deny, MinTTL: time.Millisecond, Rules: []Rule{
		mustRule(t, Deny, "tcp:any:25"),
		{Action: Allow, Domain: "example.org"},
		{Action: Allow, Domain: "ftp.example.net", Proto: TCP, Ports: Ports{21, 21}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.HasDomains() {
		t.Fatal("HasDomains false")
	}
	for name, want := range map[string]bool{"example.org": true, "www.Example.ORG.": true, "badexample.org": false, "example.net": false, "ftp.example.net": true} {
		if ok, act := p.NameAllowed(name); ok != want || (!ok && act != DNSRefused) {
			t.Errorf("NameAllowed(%q) = %v, %v", name, ok, act)
		}
	}
	a := netip.MustParseAddr("192.0.2.10")
	if v := p.Check(TCP, netip.AddrPortFrom(a, 443)); v.Allow {
		t.Errorf("before learning: %+v", v)
	}
	p.Learn("WWW.example.org.", []netip.Addr{a, netip.MustParseAddr("2001:db8::10")}, 50*time.Millisecond)
	p.Learn("evil.example", []netip.Addr{netip.MustParseAddr("192.0.2.66")}, time.Hour)
	for _, c := range []struct {
		proto Proto
		dst   string
		allow bool
		id    int
	}{
		{TCP, "192.0.2.10:443", true, 2},
		{TCP, "192.0.2.10:25", false, 1}, // an earlier rule still wins
		{TCP, "[2001:db8::10]:443", true, 2},
		{UDP, "192.0.2.10:53", false, DNSBypassRule},
		{TCP, "192.0.2.10:853", false, DNSBypassRule},
		{TCP, "192.0.2.66:443", false, 0},
	} {
		if v := p.Check(c.proto, ap(c.dst)); v.Allow != c.allow || v.RuleID != c.id {
			t.Errorf("Check(%v, %s) = %+v, want %v by %d", c.proto, c.dst, v, c.allow, c.id)
		}
	}
	p.Learn("ftp.example.net", []netip.Addr{a}, time.Hour)
	if v := p.Check(TCP, ap("192.0.2.10:21")); !v.Allow || v.RuleID != 2 {
		t.Errorf("two domains on one address: %+v", v)
	}
	time.Sleep(80 * time.Millisecond)
	if v := p.Check(TCP, ap("192.0.2.10:443")); v.Allow {
		t.Errorf("after the TTL: %+v", v)
	}
	if v := p.Check(TCP, ap("192.0.2.10:21")); !v.Allow || v.RuleID != 3 {
		t.Errorf("the other domain's entry, still live: %+v", v)
	}
	// Removing the domain rule closes its addresses at once.
	if err := p.Remove(3); err != nil {
		t.Fatal(err)
	}
	if v := p.Check(TCP, ap("192.0.2.10:21")); v.Allow {
		t.Errorf("after removing the rule: %+v", v)
	}
}

func TestLearnedIsBounded(t *testing.T) {
	p, _ := New(Config{Default: Deny, MaxLearned: 10, Rules: []Rule{{Action: Allow, Domain: "example.org"}}})
	var addrs []netip.Addr
	for i := range 20 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	if p.Learn("example.org", addrs, time.Hour) {
		t.Error("Learn past the bound reported success")
	}
	if p.learned.n != 10 {
		t.Errorf("held %d pairs, want 10", p.learned.n)
	}
}

func TestNoDomainsResolvesEverything(t *testing.T) {
	p, _ := New(Config{Default: Deny})
	if ok, _ := p.NameAllowed("anything.example"); !ok {
		t.Error("a policy without domain rules refused a name")
	}
	if v := p.Check(UDP, ap("192.0.2.1:53")); v.RuleID == DNSBypassRule {
		t.Error("DNS bypass rule without domain rules")
	}
}

// TestLookupMatchesLinearScan compares the trie with the definition:
// the first rule in order whose prefix, protocol and ports match.
func TestLookupMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randAddr := func() netip.Addr {
		if rng.IntN(2) == 0 {
			return netip.AddrFrom4([4]byte{192, 0, byte(rng.IntN(4)), byte(rng.IntN(256))})
		}
		var b [16]byte
		b[0], b[1], b[15] = 0x20, 0x01, byte(rng.IntN(256))
		b[14] = byte(rng.IntN(4))
		return netip.AddrFrom16(b)
	}
	for round := range 50 {
		var rules []Rule
		for range 1 + rng.IntN(200) {
			a := randAddr()
			bits := a.BitLen() - rng.IntN(12)
			r := Rule{Action: Action(rng.IntN(2)), Proto: Proto(rng.IntN(4))}
			pfx, _ := a.Prefix(bits)
			r.Dst = []netip.Prefix{pfx}
			if r.Proto != ICMP && rng.IntN(2) == 0 {
				lo := uint16(1 + rng.IntN(100))
				r.Ports = Ports{lo, lo + uint16(rng.IntN(50))}
			}
			rules = append(rules, r)
		}
		p, err := New(Config{Default: Action(round % 2), Rules: rules})
		if err != nil {
			t.Fatal(err)
		}
		for range 500 {
			a, proto, port := randAddr(), Proto(1+rng.IntN(3)), uint16(1+rng.IntN(160))
			want := Verdict{Allow: round%2 == 0}
			for i, r := range rules {
				if r.Dst[0].Contains(a) && (r.Proto == Any || r.Proto == proto) && (r.Ports.all() || proto != ICMP && r.Ports.contains(port)) {
					want = Verdict{Allow: r.Action == Allow, RuleID: i + 1}
					break
				}
			}
			if got := p.Check(proto, netip.AddrPortFrom(a, port)); got != want {
				t.Fatalf("round %d: Check(%v, %v, %d) = %+v, want %+v", round, proto, a, port, got, want)
			}
		}
	}
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"tcp:10.0.0.0/8:22", "[::1]:1-2", "icmp:any", "udp:2001:db8::/32", "a,b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(Allow, s)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRule(%q) returned an invalid rule: %v", s, err)
		}
		back, err := ParseRule(Allow, strings.TrimPrefix(r.String(), "allow "))
		if err != nil || back.String() != r.String() {
			t.Fatalf("round trip of %q (%q): %v", s, r.String(), err)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var j Rule
		if err := json.Unmarshal(b, &j); err != nil || j.String() != r.String() {
			t.Fatalf("JSON round trip of %q: %s, %v", s, b, err)
		}
	})
}

func FuzzRuleJSON(f *testing.F) {
	f.Add(`{"action":"deny","proto":"tcp","dst":"10.0.0.0/8","ports":"22"}`)
	f.Add(`{"action":"allow","domain":"example.org"}`)
	f.Fuzz(func(t *testing.T, s string) {
		var r Rule
		if json.Unmarshal([]byte(s), &r) != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("%s decoded to an invalid rule: %v", s, err)
		}
	})
}
