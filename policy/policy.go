package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DNSAction is what the DNS forwarder answers for a name that no domain
// rule allows, once the policy has domain rules.
type DNSAction uint8

const (
	DNSRefused DNSAction = iota
	DNSNXDomain
	// DNSResolve resolves every name (domain rules then only open the
	// addresses of theirs).
	DNSResolve
)

// ParseDNSAction reads --dns-policy's values: refused, nxdomain, resolve.
func ParseDNSAction(s string) (DNSAction, error) {
	switch s {
	case "refused":
		return DNSRefused, nil
	case "nxdomain":
		return DNSNXDomain, nil
	case "resolve":
		return DNSResolve, nil
	}
	return 0, fmt.Errorf("unknown DNS policy %q (want refused, nxdomain or resolve)", s)
}

// Config is a policy as the command line or the policy file gives it.
type Config struct {
	Default Action
	Rules   []Rule
	DNS     DNSAction
	// HostAddrs are the host's own addresses, which both presets cover.
	HostAddrs []netip.Addr
	// MinTTL is the least time an address learned for a domain rule stays
	// allowed (clients cache answers longer than their TTL); 0 means 60s.
	MinTTL time.Duration
	// MaxLearned bounds the (address, domain) pairs remembered; 0 means 65536.
	MaxLearned int
}

// Entry is a rule with its id, as list_rules shows it.
type Entry struct {
	ID   int  `json:"id"`
	Rule Rule `json:"rule"`
}

// Verdict is the answer for one flow.
type Verdict struct {
	Allow bool
	// RuleID is the id of the rule that decided; 0 for the default, -1
	// for the implicit rule that keeps DNS to the forwarder once domain
	// rules exist.
	RuleID int
}

// DNSBypassRule is the RuleID of the implicit rule that denies DNS (TCP
// and UDP ports 53 and 853) to anywhere but usernet's forwarder once the
// policy has domain rules, so that names cannot be resolved around it.
const DNSBypassRule = -1

// Policy is safe for concurrent use. Check reads an immutable snapshot
// and never waits for a rule change.
type Policy struct {
	cfg Config

	mu     sync.Mutex // serialises changes
	nextID int        // guarded by mu
	cur    atomic.Pointer[table]

	learned learnedSet
}

// New compiles cfg.
func New(cfg Config) (*Policy, error) {
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 60 * time.Second
	}
	if cfg.MaxLearned <= 0 {
		cfg.MaxLearned = 65536
	}
	p := &Policy{cfg: cfg, nextID: 1}
	p.learned.init(cfg.MaxLearned)
	entries := make([]Entry, 0, len(cfg.Rules))
	for i, r := range cfg.Rules {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("policy rule %d (%v): %w", i+1, r, err)
		}
		entries = append(entries, Entry{ID: p.nextID, Rule: r})
		p.nextID++
	}
	p.cur.Store(compile(entries, cfg.Default, cfg.HostAddrs))
	return p, nil
}

// Default is the action for flows no rule matches.
func (p *Policy) Default() Action { return p.cur.Load().def }

// List returns the rules in order.
func (p *Policy) List() []Entry {
	t := p.cur.Load()
	return append([]Entry(nil), t.entries...)
}

// Add inserts r before the rule with id before (0: at the end) and
// returns its id.
func (p *Policy) Add(r Rule, before int) (int, error) {
	if err := r.Validate(); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.cur.Load()
	at := len(t.entries)
	if before != 0 {
		at = -1
		for i, e := range t.entries {
			if e.ID == before {
				at = i
			}
		}
		if at < 0 {
			return 0, fmt.Errorf("no rule with id %d", before)
		}
	}
	id := p.nextID
	p.nextID++
	entries := make([]Entry, 0, len(t.entries)+1)
	entries = append(entries, t.entries[:at]...)
	entries = append(entries, Entry{ID: id, Rule: r})
	entries = append(entries, t.entries[at:]...)
	p.cur.Store(compile(entries, t.def, p.cfg.HostAddrs))
	return id, nil
}

// Remove deletes the rule with id.
func (p *Policy) Remove(id int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.cur.Load()
	for i, e := range t.entries {
		if e.ID == id {
			entries := append(append([]Entry(nil), t.entries[:i]...), t.entries[i+1:]...)
			p.cur.Store(compile(entries, t.def, p.cfg.HostAddrs))
			return nil
		}
	}
	return fmt.Errorf("no rule with id %d", id)
}

// SetDefault changes the default action.
func (p *Policy) SetDefault(a Action) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.cur.Load()
	p.cur.Store(compile(t.entries, a, p.cfg.HostAddrs))
}

// Check decides a new flow of proto to dst (the address usernet would
// connect to on the host; the gateway's loopback mapping is 127.0.0.1).
// dst's port is ignored for ICMP.
func (p *Policy) Check(proto Proto, dst netip.AddrPort) Verdict {
	t := p.cur.Load()
	a := dst.Addr().Unmap()
	port := dst.Port()
	if t.hasDomains && (proto == TCP || proto == UDP) && (port == 53 || port == 853) {
		return Verdict{Allow: false, RuleID: DNSBypassRule}
	}
	best := t.lookup(a, proto, port)
	if t.hasDomains {
		if i, ok := p.learned.match(t, a, proto, port, time.Now()); ok && (best < 0 || i < best) {
			best = i
		}
	}
	if best < 0 {
		return Verdict{Allow: t.def == Allow}
	}
	e := t.entries[best]
	return Verdict{Allow: e.Rule.Action == Allow, RuleID: e.ID}
}

// HasDomains says whether any rule is a domain rule: then the DNS
// forwarder must consult NameAllowed and report answers to Learn.
func (p *Policy) HasDomains() bool { return p.cur.Load().hasDomains }

// NameAllowed says whether the DNS forwarder may resolve name, and if not
// what to answer.
func (p *Policy) NameAllowed(name string) (bool, DNSAction) {
	t := p.cur.Load()
	if !t.hasDomains || p.cfg.DNS == DNSResolve {
		return true, DNSResolve
	}
	name = NormalizeDomain(name)
	for d := range t.domains {
		if underDomain(name, d) {
			return true, DNSResolve
		}
	}
	return false, p.cfg.DNS
}

// Learn records that name resolved to addrs with ttl, for the domain
// rules that cover name. It reports false if the set is full.
func (p *Policy) Learn(name string, addrs []netip.Addr, ttl time.Duration) bool {
	t := p.cur.Load()
	if !t.hasDomains {
		return true
	}
	if ttl < p.cfg.MinTTL {
		ttl = p.cfg.MinTTL
	}
	name = NormalizeDomain(name)
	until := time.Now().Add(ttl)
	ok := true
	for d := range t.domains {
		if !underDomain(name, d) {
			continue
		}
		for _, a := range addrs {
			if !p.learned.add(a.Unmap(), d, until) {
				ok = false
			}
		}
	}
	return ok
}

func underDomain(name, d string) bool {
	return name == d || strings.HasSuffix(name, "."+d)
}
