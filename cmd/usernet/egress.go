package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/usernet/usernet/policy"
)

// egressOptions is the egress policy as either command line gives it:
// rules in the order given, each flag adding one.
type egressOptions struct {
	rules     []policy.Rule
	def       string // --egress-default; "" leaves it to policyConfig
	dnsPolicy string // --dns-policy
	file      string // --policy, read by policyConfig
	fileAt    int    // how many rules came before --policy
	rst       bool   // --egress-rst
	n         int    // flags seen, for error positions
}

// egressFlags are the policy's flags, the same on both command lines.
var egressFlags = []struct {
	name, metavar, usage string
	isBool               bool
}{
	{"allow", "RULE", "allow new flows to RULE: [tcp:|udp:|icmp:]ADDR[/LEN][:PORT[-PORT]]; repeatable, first match wins", false},
	{"deny", "RULE", "deny new flows to RULE (as --allow); repeatable, first match wins", false},
	{"deny-private", "", "deny private, shared, link-local and unique-local addresses and the host's own", true},
	{"deny-host", "", "deny the host's loopback (the gateway's mapping) and the host's own addresses", true},
	{"allow-domain", "NAME", "allow the addresses the DNS forwarder resolves for NAME and names under it; other names are refused", false},
	{"egress-default", "allow|deny", "what flows no rule matches get (default allow; deny once --allow-domain is given)", false},
	{"dns-policy", "refused|nxdomain|resolve", "the DNS answer for names no --allow-domain covers (default refused)", false},
	{"egress-rst", "", "answer a denied TCP connection with a RST instead of ICMP administratively prohibited", true},
	{"policy", "FILE", "read rules from a JSON file: {\"default\":..., \"rules\":[RULE...]} in the API's format", false},
}

func isEgressFlag(name string) bool {
	for _, d := range egressFlags {
		if d.name == name {
			return true
		}
	}
	return false
}

// add applies one occurrence of an egress flag.
func (e *egressOptions) add(name, value string) error {
	e.n++
	bad := func(err error) error { return fmt.Errorf("--%s %q (egress option %d): %w", name, value, e.n, err) }
	switch name {
	case "allow", "deny":
		a := policy.Allow
		if name == "deny" {
			a = policy.Deny
		}
		r, err := policy.ParseRule(a, value)
		if err != nil {
			return bad(err)
		}
		e.rules = append(e.rules, r)
	case "deny-private", "deny-host":
		if value == "false" {
			return nil
		}
		preset := policy.PresetPrivate
		if name == "deny-host" {
			preset = policy.PresetHost
		}
		e.rules = append(e.rules, policy.Rule{Action: policy.Deny, Preset: preset})
	case "allow-domain":
		r := policy.Rule{Action: policy.Allow, Domain: policy.NormalizeDomain(value)}
		if err := r.Validate(); err != nil {
			return bad(err)
		}
		e.rules = append(e.rules, r)
	case "egress-default":
		if _, err := policy.ParseAction(value); err != nil {
			return bad(err)
		}
		e.def = value
	case "dns-policy":
		if _, err := policy.ParseDNSAction(value); err != nil {
			return bad(err)
		}
		e.dnsPolicy = value
	case "egress-rst":
		e.rst = value != "false"
	case "policy":
		if e.file != "" {
			return bad(fmt.Errorf("only one policy file"))
		}
		e.file, e.fileAt = value, len(e.rules)
	default:
		return fmt.Errorf("unknown egress option --%s", name)
	}
	return nil
}

// enabled says whether any egress flag was given: without one usernet has
// no policy and checks nothing.
func (e *egressOptions) enabled() bool { return e.n > 0 }

// egressFlag is one egress flag as a pflag.Value: all of them append to
// one list, so the rules keep the command line's order.
type egressFlag struct {
	name   string
	isBool bool
	e      *egressOptions
}

func (f *egressFlag) Set(v string) error { return f.e.add(f.name, v) }
func (f *egressFlag) String() string     { return "" }
func (f *egressFlag) Type() string {
	if f.isBool {
		return "bool"
	}
	return "string"
}

// addEgressFlags declares the egress flags on the slirp4netns command line.
func addEgressFlags(fs *pflag.FlagSet, e *egressOptions) {
	for _, d := range egressFlags {
		f := fs.VarPF(&egressFlag{name: d.name, isBool: d.isBool, e: e}, d.name, "", d.usage)
		if d.isBool {
			f.NoOptDefVal = "true"
		}
		if d.metavar != "" {
			metavars[d.name] = d.metavar
		}
	}
}

// policyFile is the format of --policy FILE.
type policyFile struct {
	Default   string        `json:"default,omitempty"`
	DNSPolicy string        `json:"dns_policy,omitempty"`
	Rules     []policy.Rule `json:"rules"`
}

// readPolicyFile reads and checks a policy file; an error names the rule.
func readPolicyFile(path string) (policyFile, error) {
	var pf policyFile
	b, err := os.ReadFile(path)
	if err != nil {
		return pf, fmt.Errorf("policy file: %w", err)
	}
	var raw struct {
		Default   string            `json:"default"`
		DNSPolicy string            `json:"dns_policy"`
		Rules     []json.RawMessage `json:"rules"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return pf, fmt.Errorf("policy file %s: %w", path, err)
	}
	if raw.Default != "" {
		if _, err := policy.ParseAction(raw.Default); err != nil {
			return pf, fmt.Errorf("policy file %s: default: %w", path, err)
		}
	}
	if raw.DNSPolicy != "" {
		if _, err := policy.ParseDNSAction(raw.DNSPolicy); err != nil {
			return pf, fmt.Errorf("policy file %s: dns_policy: %w", path, err)
		}
	}
	pf.Default, pf.DNSPolicy = raw.Default, raw.DNSPolicy
	for i, m := range raw.Rules {
		var r policy.Rule
		if err := json.Unmarshal(m, &r); err != nil {
			return pf, fmt.Errorf("policy file %s: rule %d: %w", path, i+1, err)
		}
		pf.Rules = append(pf.Rules, r)
	}
	return pf, nil
}

// policyConfig builds the policy's configuration: the file's rules at the
// place --policy was given, --egress-default over the file's default, and
// deny by default once a domain rule exists (else allow). fileData, when
// not nil, is the file's content read before the sandbox.
func (e *egressOptions) policyConfig(pf policyFile, host []netip.Addr) (policy.Config, error) {
	rules := make([]policy.Rule, 0, len(e.rules)+len(pf.Rules))
	rules = append(rules, e.rules[:e.fileAt]...)
	rules = append(rules, pf.Rules...)
	rules = append(rules, e.rules[e.fileAt:]...)
	cfg := policy.Config{Rules: rules, HostAddrs: host}
	def := e.def
	if def == "" {
		def = pf.Default
	}
	if def == "" {
		def = "allow"
		for _, r := range rules {
			if r.Domain != "" {
				def = "deny"
			}
		}
	}
	cfg.Default, _ = policy.ParseAction(def)
	dnsPolicy := e.dnsPolicy
	if dnsPolicy == "" {
		dnsPolicy = pf.DNSPolicy
	}
	if dnsPolicy != "" {
		cfg.DNS, _ = policy.ParseDNSAction(dnsPolicy)
	}
	return cfg, nil
}

// egressConfig reads what the policy needs from the host, before the
// sandbox hides it: the policy file and the host's own addresses (the
// presets cover them). nil without any egress flag.
func egressConfig(o *options) (*policy.Config, error) {
	if !o.egress.enabled() {
		return nil, nil
	}
	var pf policyFile
	if o.egress.file != "" {
		var err error
		if pf, err = readPolicyFile(o.egress.file); err != nil {
			return nil, err
		}
	}
	host, err := hostAddrs()
	if err != nil {
		return nil, fmt.Errorf("egress policy: the host's addresses: %w", err)
	}
	cfg, err := o.egress.policyConfig(pf, host)
	if err != nil {
		return nil, err
	}
	if _, err := policy.New(cfg); err != nil {
		return nil, fmt.Errorf("egress policy: %w", err)
	}
	return &cfg, nil
}

// hostAddrs are the addresses of the host's interfaces but loopback.
func hostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ok && !ip.Unmap().IsLoopback() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// policyNames lets the DNS forwarder ask the egress policy about names.
type policyNames struct{ p *policy.Policy }

func (n policyNames) Allow(name string) (bool, dnsmessage.RCode) {
	ok, act := n.p.NameAllowed(name)
	if ok {
		return true, dnsmessage.RCodeSuccess
	}
	if act == policy.DNSNXDomain {
		return false, dnsmessage.RCodeNameError
	}
	return false, dnsmessage.RCodeRefused
}

func (n policyNames) Answered(name string, addrs []netip.Addr, ttl time.Duration) {
	n.p.Learn(name, addrs, ttl)
}
