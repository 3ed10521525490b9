package policy

import (
	"net/netip"
	"sync"
	"time"
)

// table is a compiled, immutable rule list: a binary trie per address
// family whose nodes hold the indices of the rules with that exact prefix,
// so that a lookup walks at most 32 or 128 nodes however many rules there
// are, and takes the lowest index that matches (first match wins).
type table struct {
	entries    []Entry
	def        Action
	v4, v6     *node
	domains    map[string][]int // domain rule indices by domain, ascending
	hasDomains bool
}

type node struct {
	child [2]*node
	rules []int // ascending
}

func compile(entries []Entry, def Action, host []netip.Addr) *table {
	t := &table{entries: entries, def: def, v4: &node{}, v6: &node{}, domains: map[string][]int{}}
	for i, e := range entries {
		r := e.Rule
		switch {
		case r.Domain != "":
			t.domains[r.Domain] = append(t.domains[r.Domain], i)
			t.hasDomains = true
		case r.Preset != "":
			for _, p := range presetPrefixes[r.Preset] {
				t.insert(p, i)
			}
			for _, a := range host {
				a = a.Unmap()
				t.insert(netip.PrefixFrom(a, a.BitLen()), i)
			}
		default:
			for _, p := range r.Dst {
				t.insert(p, i)
			}
		}
	}
	return t
}

func (t *table) root(a netip.Addr) *node {
	if a.Is4() {
		return t.v4
	}
	return t.v6
}

func (t *table) insert(p netip.Prefix, i int) {
	n := t.root(p.Addr())
	b := p.Addr().AsSlice()
	for k := 0; k < p.Bits(); k++ {
		bit := b[k/8] >> (7 - k%8) & 1
		if n.child[bit] == nil {
			n.child[bit] = &node{}
		}
		n = n.child[bit]
	}
	// A rule listing overlapping prefixes may reach a node twice.
	if l := len(n.rules); l == 0 || n.rules[l-1] != i {
		n.rules = append(n.rules, i)
	}
}

// matches says whether rule i applies to a flow of proto to port.
func (t *table) matches(i int, proto Proto, port uint16) bool {
	r := &t.entries[i].Rule
	if r.Proto != Any && r.Proto != proto {
		return false
	}
	if r.Ports.all() {
		return true
	}
	return proto != ICMP && r.Ports.contains(port)
}

// lookup returns the lowest index of a prefix rule matching the flow, or -1.
func (t *table) lookup(a netip.Addr, proto Proto, port uint16) int {
	best := -1
	n := t.root(a)
	b := a.AsSlice()
	for k := 0; n != nil; k++ {
		for _, i := range n.rules {
			if best >= 0 && i >= best {
				break
			}
			if t.matches(i, proto, port) {
				best = i
				break
			}
		}
		if k == len(b)*8 {
			break
		}
		n = n.child[b[k/8]>>(7-k%8)&1]
	}
	return best
}

// learnedSet remembers, per address, which domain rules' names resolved
// to it and until when.
type learnedSet struct {
	mu  sync.Mutex
	max int
	n   int                                 // guarded by mu: pairs held
	m   map[netip.Addr]map[string]time.Time // guarded by mu
}

func (l *learnedSet) init(max int) {
	l.max = max
	l.m = map[netip.Addr]map[string]time.Time{}
}

func (l *learnedSet) add(a netip.Addr, domain string, until time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ds := l.m[a]
	if _, ok := ds[domain]; !ok {
		if l.n >= l.max {
			l.sweep(time.Now())
		}
		if l.n >= l.max {
			return false
		}
		if ds == nil {
			ds = map[string]time.Time{}
			l.m[a] = ds
		}
		l.n++
	}
	if ds[domain].Before(until) {
		ds[domain] = until
	}
	return true
}

// sweep drops expired pairs; called with mu held when the set is full.
func (l *learnedSet) sweep(now time.Time) {
	for a, ds := range l.m {
		for d, until := range ds {
			if now.After(until) {
				delete(ds, d)
				l.n--
			}
		}
		if len(ds) == 0 {
			delete(l.m, a)
		}
	}
}

// match returns the lowest index of a live domain rule of t whose domain
// resolved to a.
func (l *learnedSet) match(t *table, a netip.Addr, proto Proto, port uint16, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	best, found := -1, false
	for d, until := range l.m[a] {
		if now.After(until) {
			continue
		}
		for _, i := range t.domains[d] {
			if found && i >= best {
				break
			}
			if t.matches(i, proto, port) {
				best, found = i, true
				break
			}
		}
	}
	return best, found
}
