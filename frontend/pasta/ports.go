package pasta

import (
	"iter"
	"net/netip"
	"strings"
)

// Mode is how one of -t, -u, -T, -U forwards.
type Mode int

const (
	// ModeUnset: the option was not given. pasta then forwards as for
	// ModeAuto (all four options default to auto in pasta).
	ModeUnset Mode = iota
	// ModeSpec: the ports in Forward.Ranges.
	ModeSpec
	// ModeNone: nothing.
	ModeNone
	// ModeAuto: whatever is listening on the other side, rescanned
	// every second.
	ModeAuto
)

func (m Mode) String() string {
	switch m {
	case ModeUnset:
		return "unset"
	case ModeSpec:
		return "spec"
	case ModeNone:
		return "none"
	case ModeAuto:
		return "auto"
	}
	return "Mode(?)"
}

// Forward is what one of -t, -u, -T, -U asks for, all its occurrences
// together.
type Forward struct {
	Mode Mode
	// Ranges are the listening port ranges of ModeSpec, in command-line
	// order, with the spec's exclusions already taken out (a range with
	// holes becomes several). Two ranges may share ports, on different
	// bind addresses or not: pasta opens a listener for each.
	Ranges []PortRange
}

// PortRange is a run of consecutive ports forwarded by one item of a
// port spec.
type PortRange struct {
	// BindAddr is the address to listen on (-t/-u "ADDR/"); zero:
	// pasta's default, a dual-stack wildcard on the host for -t/-u, and
	// 127.0.0.1 plus ::1 in the namespace for -T/-U.
	BindAddr netip.Addr
	// BindIfname is the interface to bind to (-t/-u "%IF/"); "": none.
	BindIfname string
	// First and Last are the listening ports, inclusive; First is never 0.
	First, Last uint16
	// To is where First goes; First+k goes to To+k. See Forward.Target
	// for which range decides when several cover a port.
	To uint16
	// Weak: the range comes from an exclusions-only spec ("~25"). pasta
	// ignores a port it cannot bind there, and fails only if it binds
	// none of the spec's ports; elsewhere any bind failure is fatal
	// ("Failed to bind port %u (%s) for option '-%c %s'").
	Weak bool
	// Spec is the option argument the range came from, as pasta's
	// messages quote it.
	Spec string
}

// Mapping is one listening port.
type Mapping struct {
	BindAddr   netip.Addr
	BindIfname string
	Port       uint16 // where to listen
	To         uint16 // where to forward, per Forward.Target
	Weak       bool
}

// Auto reports whether pasta forwards in auto mode: asked for, or by
// default.
func (f *Forward) Auto() bool { return f.Mode == ModeAuto || f.Mode == ModeUnset }

// Target is the port that a connection to listening port port is
// forwarded to, and whether port is forwarded at all. pasta keeps one
// target per port number, not per listener, so the last range covering
// the port decides, whatever its bind address: "-t 127.0.0.1/80:8080 -t
// ::1/80:9090" sends both listeners' connections to 9090.
func (f *Forward) Target(port uint16) (uint16, bool) {
	for i := len(f.Ranges) - 1; i >= 0; i-- {
		r := &f.Ranges[i]
		if port >= r.First && port <= r.Last {
			return r.To + (port - r.First), true
		}
	}
	return 0, false
}

// Mappings yields one Mapping per listening port, range by range. An
// exclusions-only spec alone yields tens of thousands.
func (f *Forward) Mappings() iter.Seq[Mapping] {
	return func(yield func(Mapping) bool) {
		for _, r := range f.Ranges {
			for p := int(r.First); p <= int(r.Last); p++ {
				to, _ := f.Target(uint16(p))
				if !yield(Mapping{BindAddr: r.BindAddr, BindIfname: r.BindIfname, Port: uint16(p), To: to, Weak: r.Weak}) {
					return
				}
			}
		}
	}
}

// Len is the number of Mappings.
func (f *Forward) Len() int {
	n := 0
	for _, r := range f.Ranges {
		n += int(r.Last) - int(r.First) + 1
	}
	return n
}

const (
	numPorts = 1 << 16
	ifNamSiz = 16   // IFNAMSIZ, with the terminating NUL
	bufSiz   = 8192 // BUFSIZ: pasta copies a spec into a buffer this big
)

// portSet is a bitmap of port numbers.
type portSet [numPorts / 64]uint64

func (s *portSet) has(p int) bool { return s[p/64]&(1<<(p%64)) != 0 }
func (s *portSet) add(p int)      { s[p/64] |= 1 << (p % 64) }

// parsePortRange reads "N[-M]" as pasta's parse_port_range does (strtoul
// base 10, so leading blanks and a sign pass). It returns the unparsed
// rest.
func parsePortRange(s string) (first, last int, rest string, ok bool) {
	f, n, _ := strtoul(s, 10)
	if n == 0 {
		return 0, 0, "", false
	}
	l := f
	s = s[n:]
	if strings.HasPrefix(s, "-") {
		s = s[1:]
		if l, n, _ = strtoul(s, 10); n == 0 {
			return 0, 0, "", false
		}
		s = s[n:]
	}
	if l < f || l >= numPorts {
		return 0, 0, "", false
	}
	return int(f), int(l), s, true
}

// portsParser holds what pasta's conf_ports keeps across calls.
type portsParser struct {
	ephemeral [2]uint16
	mapped    map[byte]*portSet // per option: the ports already forwarded
}

// parse is pasta's conf_ports for option opt ('t', 'u', 'T' or 'U') with
// argument arg, into fwd.
func (pp *portsParser) parse(o *Options, fwd *Forward, opt byte, arg string) error {
	bad := func() error { return die("Invalid port specifier %s", arg) }
	conflict := func() error { return die("Port forwarding mode '%s' conflicts with previous mode", arg) }

	if arg == "none" {
		if fwd.Mode != ModeUnset {
			return conflict()
		}
		fwd.Mode = ModeNone
		return nil
	}
	if (opt == 't' || opt == 'T') && o.NoTCP {
		return die("TCP port forwarding requested but TCP is disabled")
	}
	if (opt == 'u' || opt == 'U') && o.NoUDP {
		return die("UDP port forwarding requested but UDP is disabled")
	}
	switch arg {
	case "auto":
		if fwd.Mode != ModeUnset {
			return conflict()
		}
		fwd.Mode = ModeAuto
		return nil
	case "all":
		if fwd.Mode != ModeUnset {
			return conflict()
		}
		return die("'all' port forwarding is only allowed for passt")
	}
	if fwd.Mode > ModeSpec {
		return die("Specific ports cannot be specified together with all/none/auto")
	}
	fwd.Mode = ModeSpec

	buf := arg
	if len(buf) > bufSiz-1 {
		buf = buf[:bufSiz-1]
	}
	var addr netip.Addr
	var ifname string
	spec := buf
	if bind, rest, ok := strings.Cut(buf, "/"); ok {
		spec = rest
		if opt != 't' && opt != 'u' {
			return bad()
		}
		host, ifn, hasIf := strings.Cut(bind, "%")
		if hasIf {
			if len(ifn) >= ifNamSiz {
				return bad()
			}
			ifname = ifn
		}
		if !hasIf || host != "" { // "%IF/" alone binds no address
			if len(host) > 0 && host[0] == '[' && host[len(host)-1] == ']' {
				host = host[1 : len(host)-1] // brackets are allowed for IPv4 too
			}
			a, ok := inanyPton(host)
			if !ok {
				return bad()
			}
			addr = a
		}
	}
	chunks := strings.Split(spec, ",")

	// Exclusions first, wherever they are in the list.
	var exclude portSet
	excludeOnly := true
	for _, c := range chunks {
		x, ok := strings.CutPrefix(c, "~")
		if !ok {
			excludeOnly = false
			continue
		}
		first, last, rest, ok := parsePortRange(x)
		if !ok || rest != "" {
			return bad()
		}
		for i := first; i <= last; i++ {
			if exclude.has(i) {
				return die("Overlapping excluded ranges %s", arg)
			}
			exclude.add(i)
		}
	}

	mapped := pp.mapped[opt]
	if mapped == nil {
		mapped = new(portSet)
		pp.mapped[opt] = mapped
	}
	add := func(first, last, to int, weak bool) error {
		if first == 0 {
			return die("Can't forward port 0 for option '-%c %s'", opt, arg)
		}
		delta := uint16(to - first)
		remapped, some := false, false
		for i := first; i <= last; i++ {
			if exclude.has(i) {
				continue
			}
			if mapped.has(i) {
				remapped = true
			}
			mapped.add(i)
			some = true
			if n := len(fwd.Ranges); n > 0 {
				r := &fwd.Ranges[n-1]
				if r.Spec == arg && int(r.Last) == i-1 && r.To+(r.Last-r.First)+1 == uint16(i)+delta &&
					r.BindAddr == addr && r.BindIfname == ifname && r.Weak == weak {
					r.Last = uint16(i)
					continue
				}
			}
			fwd.Ranges = append(fwd.Ranges, PortRange{BindAddr: addr, BindIfname: ifname,
				First: uint16(i), Last: uint16(i), To: uint16(i) + delta, Weak: weak, Spec: arg})
		}
		if remapped {
			// pasta warns once per port; once per item is enough to read.
			o.Warnings = append(o.Warnings, "Altering mapping of already mapped port number: "+arg)
		}
		if !some {
			return die("Failed to bind any port for '-%c %s'", opt, arg)
		}
		return nil
	}

	if excludeOnly {
		// Everything but the exclusions and the ephemeral ports, which
		// are left to the kernel's outgoing connections.
		for i := int(pp.ephemeral[0]); i <= int(pp.ephemeral[1]); i++ {
			exclude.add(i)
		}
		return add(1, numPorts-1, 1, true)
	}

	for _, c := range chunks {
		if strings.HasPrefix(c, "~") {
			continue
		}
		first, last, rest, ok := parsePortRange(c)
		if !ok {
			return bad()
		}
		to := first
		if m, ok := strings.CutPrefix(rest, ":"); ok {
			var tl int
			if to, tl, rest, ok = parsePortRange(m); !ok || tl-to != last-first {
				return bad()
			}
		}
		if rest != "" {
			return bad()
		}
		if err := add(first, last, to, false); err != nil {
			return err
		}
	}
	return nil
}

// inanyPton is passt's inany_pton: IPv4 first, then IPv6. passt keeps
// IPv4 as IPv4-mapped IPv6, so "::ffff:192.0.2.1" is the same bind
// address as "192.0.2.1"; both come back as IPv4 here.
func inanyPton(s string) (netip.Addr, bool) {
	if a, ok := inetPton4(s); ok {
		return a, true
	}
	if a, ok := inetPton6(s); ok {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

// Ephemeral ranges pasta uses for exclusions-only specs.
var (
	// LinuxEphemeral is Linux's default net.ipv4.ip_local_port_range,
	// which Parse assumes unless told otherwise (WithEphemeral).
	LinuxEphemeral = [2]uint16{32768, 60999}
	// FallbackEphemeral is what pasta assumes when it cannot read or
	// parse ip_local_port_range: RFC 6335's dynamic ports.
	FallbackEphemeral = [2]uint16{49152, 65535}
)

// ParseEphemeral reads the contents of
// /proc/sys/net/ipv4/ip_local_port_range as pasta does: the first line,
// two integers separated by a tab, each below 65536. If it cannot, it
// returns FallbackEphemeral and false (pasta warns "Unable to parse %s";
// the caller that could not read the file should use FallbackEphemeral
// too, after pasta's warning "Unable to open %s: <strerror>").
func ParseEphemeral(content []byte) (r [2]uint16, ok bool) {
	line, _, _ := strings.Cut(string(content), "\n")
	lo, hi, ok := strings.Cut(line, "\t")
	if !ok {
		return FallbackEphemeral, false
	}
	first, n, erange := strtol(lo, 10)
	if erange || n != len(lo) {
		return FallbackEphemeral, false
	}
	last, n, erange := strtol(hi, 10)
	if erange || n != len(hi) {
		return FallbackEphemeral, false
	}
	if first < 0 || first >= numPorts || last < 0 || last >= numPorts {
		return FallbackEphemeral, false
	}
	return [2]uint16{uint16(first), uint16(last)}, true
}
