package main

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/usernet/usernet/policy"
)

func ruleStrings(rs []policy.Rule) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.String())
	}
	return strings.Join(s, "; ")
}

func TestEgressFlagsKeepOrder(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.json")
	os.WriteFile(file, []byte(`{"default":"allow","rules":[{"action":"deny","proto":"udp","dst":"any","ports":"123"},{"action":"allow","domain":"example.org"}]}`), 0o600)
	o, _, err := parseFlags([]string{"--deny-private", "--allow", "tcp:192.0.2.0/24:443", "--policy", file, "--deny=icmp:any", "--allow-domain", "Example.NET.", "--deny-host", "1", "tap0"}, io.Discard, 2)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := readPolicyFile(o.egress.file)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.egress.policyConfig(pf, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "deny preset=private; allow tcp:192.0.2.0/24:443; deny udp:[0.0.0.0/0,::/0]:123; allow domain=example.org; deny icmp:0.0.0.0/0,::/0; allow domain=example.net; deny preset=host"
	if got := ruleStrings(cfg.Rules); got != want {
		t.Errorf("rules\n got %s\nwant %s", got, want)
	}
	// The file's default wins over the domain rules' deny.
	if cfg.Default != policy.Allow {
		t.Errorf("default %v, want the file's allow", cfg.Default)
	}
}

func TestEgressDefaults(t *testing.T) {
	for _, c := range []struct {
		args []string
		def  policy.Action
		dns  policy.DNSAction
	}{
		{[]string{"--deny", "10.0.0.0/8"}, policy.Allow, policy.DNSRefused},
		{[]string{"--allow-domain", "example.org"}, policy.Deny, policy.DNSRefused},
		{[]string{"--allow-domain", "example.org", "--egress-default", "allow", "--dns-policy", "nxdomain"}, policy.Allow, policy.DNSNXDomain},
		{[]string{"--egress-default=deny"}, policy.Deny, policy.DNSRefused},
	} {
		o, _, err := parseFlags(append(c.args, "1", "tap0"), io.Discard, 2)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if !o.egress.enabled() {
			t.Errorf("%v: not enabled", c.args)
		}
		cfg, _ := o.egress.policyConfig(policyFile{}, nil)
		if cfg.Default != c.def || cfg.DNS != c.dns {
			t.Errorf("%v: default %v dns %v, want %v %v", c.args, cfg.Default, cfg.DNS, c.def, c.dns)
		}
	}
	o, _, _ := parseFlags([]string{"1", "tap0"}, io.Discard, 2)
	if o.egress.enabled() {
		t.Error("egress enabled without a flag")
	}
}

func TestEgressFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow", "10.0.0.0/8", "--deny", "tcp:10.0.0.0/8:0"}, `--deny "tcp:10.0.0.0/8:0" (egress option 2)`},
		{[]string{"--allow-domain", "exa mple.org"}, `bad domain`},
		{[]string{"--egress-default", "maybe"}, `unknown action "maybe"`},
		{[]string{"--dns-policy", "drop"}, `unknown DNS policy`},
		{[]string{"--policy", "a", "--policy", "b"}, `only one policy file`},
	} {
		_, _, err := parseFlags(append(c.args, "1", "tap0"), io.Discard, 2)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
	}
	dir := t.TempDir()
	for _, c := range []struct{ content, want string }{
		{`{"rules":[{"action":"allow","dst":"any"},{"action":"deny","dst":"300.0.0.0/8"}]}`, "rule 2: rule: bad prefix"},
		{`{"rules":[],"defaults":"deny"}`, `unknown field "defaults"`},
		{`{"default":"block","rules":[]}`, "default: unknown action"},
		{`not json`, "invalid character"},
	} {
		f := filepath.Join(dir, "p.json")
		os.WriteFile(f, []byte(c.content), 0o600)
		if _, err := readPolicyFile(f); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.content, err, c.want)
		}
	}
}

func TestEgressFlagsOnPastaCommandLine(t *testing.T) {
	o, _ := parsePasta(t, "--config-net --deny-private --allow tcp:[2001:db8::/32]:443 --allow-domain example.org -- true")
	cfg, _ := o.egress.policyConfig(policyFile{}, []netip.Addr{netip.MustParseAddr("192.0.2.1")})
	if got, want := ruleStrings(cfg.Rules), "deny preset=private; allow tcp:[2001:db8::/32]:443; allow domain=example.org"; got != want {
		t.Errorf("rules %s, want %s", got, want)
	}
	if cfg.Default != policy.Deny {
		t.Errorf("default %v", cfg.Default)
	}
}
