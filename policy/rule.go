// Package policy decides which new flows from the namespace may leave for
// the host's network: an ordered list of rules, the first that matches
// wins, else a default. A rule names a destination (prefixes, a preset, or
// a domain whose addresses the DNS forwarder learns), a protocol and a port
// range. It knows nothing of packets or sockets: the stack asks it about
// each new flow, the DNS forwarder about each name.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Action is what a rule does to a flow it matches.
type Action uint8

const (
	Allow Action = iota
	Deny
)

func (a Action) String() string {
	if a == Deny {
		return "deny"
	}
	return "allow"
}

// ParseAction reads "allow" or "deny".
func ParseAction(s string) (Action, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return 0, fmt.Errorf("unknown action %q (want allow or deny)", s)
}

// Proto is the protocol of a flow, or of a rule (Any matches all).
type Proto uint8

const (
	Any Proto = iota
	TCP
	UDP
	ICMP
)

var protoNames = [...]string{Any: "any", TCP: "tcp", UDP: "udp", ICMP: "icmp"}

func (p Proto) String() string {
	if int(p) < len(protoNames) {
		return protoNames[p]
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

func parseProto(s string) (Proto, bool) {
	for i, n := range protoNames {
		if s == n {
			return Proto(i), true
		}
	}
	return 0, false
}

// Ports is an inclusive port range; the zero value means every port.
type Ports struct{ Lo, Hi uint16 }

func (p Ports) all() bool { return p.Lo == 0 && p.Hi == 0 }

func (p Ports) contains(port uint16) bool { return p.all() || p.Lo <= port && port <= p.Hi }

func (p Ports) String() string {
	switch {
	case p.all():
		return ""
	case p.Lo == p.Hi:
		return strconv.Itoa(int(p.Lo))
	}
	return strconv.Itoa(int(p.Lo)) + "-" + strconv.Itoa(int(p.Hi))
}

// ParsePorts reads N or A-B, each 1..65535, A <= B.
func ParsePorts(s string) (Ports, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePort(lo)
	if err != nil {
		return Ports{}, err
	}
	b := a
	if isRange {
		if b, err = parsePort(hi); err != nil {
			return Ports{}, err
		}
		if b < a {
			return Ports{}, fmt.Errorf("port range %q is reversed", s)
		}
	}
	return Ports{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > 65535 {
		return 0, fmt.Errorf("bad port %q (want 1 to 65535)", s)
	}
	return uint16(n), nil
}

// Presets name the destinations users ask for most; their prefixes are
// fixed, and both also cover the host's own addresses (Config.HostAddrs).
const (
	// PresetPrivate: RFC 1918, shared (CGNAT) and link-local IPv4 (cloud
	// metadata services live at 169.254.169.254), unique local and
	// link-local IPv6, and the host's own addresses.
	PresetPrivate = "private"
	// PresetHost: the host's loopback (where the gateway's mapping leads)
	// and the host's own addresses.
	PresetHost = "host"
)

var presetPrefixes = map[string][]netip.Prefix{
	PresetPrivate: {
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
	},
	PresetHost: {
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
	},
}

// Rule is one line of a policy. Exactly one of Dst, Preset and Domain
// names its destinations.
type Rule struct {
	Action Action
	Proto  Proto // Any: TCP, UDP and ICMP
	// Ports limits a TCP or UDP rule; a rule with ports never matches ICMP.
	Ports Ports
	// Dst are destination prefixes; 0.0.0.0/0 and ::/0 for everything.
	Dst []netip.Prefix
	// Preset is PresetPrivate or PresetHost.
	Preset string
	// Domain matches the addresses that the DNS forwarder resolved for
	// this name or a name under it, for their TTL.
	Domain string
}

// Validate checks a rule made in code or decoded from JSON.
func (r Rule) Validate() error {
	n := 0
	if len(r.Dst) > 0 {
		n++
	}
	if r.Preset != "" {
		n++
		if _, ok := presetPrefixes[r.Preset]; !ok {
			return fmt.Errorf("unknown preset %q (want %s or %s)", r.Preset, PresetPrivate, PresetHost)
		}
	}
	if r.Domain != "" {
		n++
		if err := checkDomain(r.Domain); err != nil {
			return err
		}
	}
	if n != 1 {
		return errors.New("a rule needs exactly one of dst, preset and domain")
	}
	for _, p := range r.Dst {
		if !p.IsValid() || p != p.Masked() {
			return fmt.Errorf("bad destination prefix %v (host bits set?)", p)
		}
	}
	if r.Action > Deny {
		return fmt.Errorf("bad action %d", r.Action)
	}
	if r.Proto > ICMP {
		return fmt.Errorf("bad protocol %d", r.Proto)
	}
	if !r.Ports.all() {
		if r.Proto == ICMP {
			return errors.New("an icmp rule has no ports")
		}
		if r.Ports.Lo == 0 || r.Ports.Hi < r.Ports.Lo {
			return fmt.Errorf("bad port range %d-%d", r.Ports.Lo, r.Ports.Hi)
		}
	}
	return nil
}

// String is the rule in the flag syntax, "deny tcp:10.0.0.0/8:22".
func (r Rule) String() string {
	var dst string
	switch {
	case r.Preset != "":
		dst = "preset=" + r.Preset
	case r.Domain != "":
		dst = "domain=" + r.Domain
	default:
		s := make([]string, len(r.Dst))
		for i, p := range r.Dst {
			s[i] = p.String()
		}
		dst = strings.Join(s, ",")
		if !r.Ports.all() && strings.Contains(dst, ":") {
			dst = "[" + dst + "]"
		}
	}
	out := r.Action.String() + " "
	if r.Proto != Any {
		out += r.Proto.String() + ":"
	}
	out += dst
	if !r.Ports.all() {
		out += ":" + r.Ports.String()
	}
	return out
}

// ParseRule reads the flag syntax of --allow and --deny:
//
//	[PROTO:]DST[:PORTS]
//
// PROTO is tcp, udp, icmp or any; DST is an address or prefix (IPv6 in
// brackets when PORTS follow), "any" for every address, or several
// separated by commas; PORTS is N or A-B.
func ParseRule(a Action, spec string) (Rule, error) {
	r := Rule{Action: a}
	rest := spec
	if p, after, ok := strings.Cut(rest, ":"); ok {
		if proto, known := parseProto(p); known {
			r.Proto, rest = proto, after
		}
	}
	dst, ports := rest, ""
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return Rule{}, fmt.Errorf("rule %q: missing ']'", spec)
		}
		dst, ports = rest[1:end], rest[end+1:]
		if ports != "" {
			if ports[0] != ':' {
				return Rule{}, fmt.Errorf("rule %q: want ':PORTS' after ']'", spec)
			}
			ports = ports[1:]
			if ports == "" {
				return Rule{}, fmt.Errorf("rule %q: empty port range", spec)
			}
		}
	case strings.Count(rest, ":") == 1:
		dst, ports, _ = strings.Cut(rest, ":")
		if ports == "" {
			return Rule{}, fmt.Errorf("rule %q: empty port range", spec)
		}
	}
	if ports != "" {
		p, err := ParsePorts(ports)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", spec, err)
		}
		r.Ports = p
	}
	if dst == "" {
		return Rule{}, fmt.Errorf("rule %q: no destination", spec)
	}
	for _, d := range strings.Split(dst, ",") {
		if d == "any" || d == "*" {
			r.Dst = append(r.Dst, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
			continue
		}
		p, err := parseDst(d)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", spec, err)
		}
		r.Dst = append(r.Dst, p)
	}
	if err := r.Validate(); err != nil {
		return Rule{}, fmt.Errorf("rule %q: %w", spec, err)
	}
	return r, nil
}

func parseDst(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad prefix %q", s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("prefix %q has host bits set (did you mean %v?)", s, p.Masked())
		}
		return unmapPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("bad address %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// unmapPrefix turns ::ffff:a.b.c.d/N (N >= 96) into a.b.c.d/(N-96): flows
// are checked with IPv4-mapped destinations unmapped.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// checkDomain accepts a DNS name of letters, digits, hyphens and
// underscores, labels of 1 to 63 bytes, at most 253 in all.
func checkDomain(d string) error {
	if d == "" || len(d) > 253 {
		return fmt.Errorf("bad domain %q (length)", d)
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("bad domain %q", d)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad domain %q", d)
			}
		}
	}
	return nil
}

// NormalizeDomain lower-cases a name and drops a trailing dot.
func NormalizeDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(d), ".")
}

// ruleJSON is a rule in the API's and the policy file's format:
//
//	{"action":"deny","proto":"tcp","dst":"10.0.0.0/8","ports":"22"}
//	{"action":"deny","preset":"private"}
//	{"action":"allow","domain":"example.org"}
type ruleJSON struct {
	Action string `json:"action"`
	Proto  string `json:"proto,omitempty"`
	Dst    any    `json:"dst,omitempty"` // a string or a list of strings
	Ports  string `json:"ports,omitempty"`
	Preset string `json:"preset,omitempty"`
	Domain string `json:"domain,omitempty"`
}

// MarshalJSON writes the API's format.
func (r Rule) MarshalJSON() ([]byte, error) {
	j := ruleJSON{Action: r.Action.String(), Ports: r.Ports.String(), Preset: r.Preset, Domain: r.Domain}
	if r.Proto != Any {
		j.Proto = r.Proto.String()
	}
	switch len(r.Dst) {
	case 0:
	case 1:
		j.Dst = r.Dst[0].String()
	default:
		s := make([]string, len(r.Dst))
		for i, p := range r.Dst {
			s[i] = p.String()
		}
		j.Dst = s
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the API's format and validates the rule.
func (r *Rule) UnmarshalJSON(b []byte) error {
	var j ruleJSON
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("rule: %w", err)
	}
	var out Rule
	var err error
	if out.Action, err = ParseAction(j.Action); err != nil {
		return fmt.Errorf("rule: %w", err)
	}
	if j.Proto != "" {
		var ok bool
		if out.Proto, ok = parseProto(j.Proto); !ok {
			return fmt.Errorf("rule: unknown protocol %q (want tcp, udp, icmp or any)", j.Proto)
		}
	}
	if j.Ports != "" {
		if out.Ports, err = ParsePorts(j.Ports); err != nil {
			return fmt.Errorf("rule: %w", err)
		}
	}
	var dsts []string
	switch d := j.Dst.(type) {
	case nil:
	case string:
		dsts = []string{d}
	case []any:
		for _, e := range d {
			s, ok := e.(string)
			if !ok {
				return errors.New("rule: dst must be a string or a list of strings")
			}
			dsts = append(dsts, s)
		}
	default:
		return errors.New("rule: dst must be a string or a list of strings")
	}
	for _, d := range dsts {
		if d == "any" || d == "*" {
			out.Dst = append(out.Dst, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
			continue
		}
		p, err := parseDst(d)
		if err != nil {
			return fmt.Errorf("rule: %w", err)
		}
		out.Dst = append(out.Dst, p)
	}
	out.Preset = j.Preset
	out.Domain = NormalizeDomain(j.Domain)
	if err := out.Validate(); err != nil {
		return fmt.Errorf("rule: %w", err)
	}
	*r = out
	return nil
}
