package pasta

import (
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// optstring is pasta's: "+" for REQUIRE_ORDER, then the short options.
const optstring = "+dqfel:hs:F:I:p:P:m:a:n:M:g:i:o:D:S:H:461t:u:T:U:"

// Long-only option ids, above any short option character.
const (
	optUserns = 256 + iota
	optNetns
	optNsMAC
	optDHCPDNS
	optNoDHCPDNS
	optDHCPSearch
	optNoDHCPSearch
	optDNSForward
	optNoNetnsQuit
	optTrace
	optRunas
	optLogSize
	optVersion
	optOutboundIf4
	optOutboundIf6
	optConfigNet
	optNoCopyRoutes
	optNoCopyAddrs
	optNetnsOnly
	optMapHostLoopback
	optMapGuestAddr
	optHostLoToNsLo
	optDNSHost
	optVhostUser
	optPrintCapabilities
	optFQDN
	optRepairPath
	// pasta's flag options (a flag pointer in its table, so each is a
	// distinct option for glibc's ambiguity test).
	optNoTCP
	optNoUDP
	optNoICMP
	optNoDHCP
	optNoDHCPv6
	optNoNDP
	optNoRA
	optNoSplice
	optFreebind
	optNoMapGW
	optExtra // the caller's options: optExtra + index
)

// longOpts is pasta's table, in its order: glibc lists the candidates of
// an ambiguous prefix in table order.
var longOpts = []longOpt{
	{"debug", false, 'd'},
	{"quiet", false, 'q'},
	{"foreground", false, 'f'},
	{"stderr", false, 'e'},
	{"log-file", true, 'l'},
	{"help", false, 'h'},
	{"socket", true, 's'},
	{"fd", true, 'F'},
	{"ns-ifname", true, 'I'},
	{"pcap", true, 'p'},
	{"pid", true, 'P'},
	{"mtu", true, 'm'},
	{"address", true, 'a'},
	{"netmask", true, 'n'},
	{"mac-addr", true, 'M'},
	{"gateway", true, 'g'},
	{"interface", true, 'i'},
	{"outbound", true, 'o'},
	{"dns", true, 'D'},
	{"search", true, 'S'},
	{"hostname", true, 'H'},
	{"no-tcp", false, optNoTCP},
	{"no-udp", false, optNoUDP},
	{"no-icmp", false, optNoICMP},
	{"no-dhcp", false, optNoDHCP},
	{"no-dhcpv6", false, optNoDHCPv6},
	{"no-ndp", false, optNoNDP},
	{"no-ra", false, optNoRA},
	{"no-splice", false, optNoSplice},
	{"freebind", false, optFreebind},
	{"no-map-gw", false, optNoMapGW},
	{"ipv4-only", false, '4'},
	{"ipv6-only", false, '6'},
	{"one-off", false, '1'},
	{"tcp-ports", true, 't'},
	{"udp-ports", true, 'u'},
	{"tcp-ns", true, 'T'},
	{"udp-ns", true, 'U'},
	{"userns", true, optUserns},
	{"netns", true, optNetns},
	{"ns-mac-addr", true, optNsMAC},
	{"dhcp-dns", false, optDHCPDNS},
	{"no-dhcp-dns", false, optNoDHCPDNS},
	{"dhcp-search", false, optDHCPSearch},
	{"no-dhcp-search", false, optNoDHCPSearch},
	{"dns-forward", true, optDNSForward},
	{"no-netns-quit", false, optNoNetnsQuit},
	{"trace", false, optTrace},
	{"runas", true, optRunas},
	{"log-size", true, optLogSize},
	{"version", false, optVersion},
	{"outbound-if4", true, optOutboundIf4},
	{"outbound-if6", true, optOutboundIf6},
	{"config-net", false, optConfigNet},
	{"no-copy-routes", false, optNoCopyRoutes},
	{"no-copy-addrs", false, optNoCopyAddrs},
	{"netns-only", false, optNetnsOnly},
	{"map-host-loopback", true, optMapHostLoopback},
	{"map-guest-addr", true, optMapGuestAddr},
	{"host-lo-to-ns-lo", false, optHostLoToNsLo},
	{"dns-host", true, optDNSHost},
	{"vhost-user", false, optVhostUser},
	{"print-capabilities", false, optPrintCapabilities},
	{"socket-path", true, 's'},
	{"fqdn", true, optFQDN},
	{"repair-path", true, optRepairPath},
}

// Buffer sizes behind pasta's length checks.
const (
	pathMax       = 4096 // PATH_MAX
	maxDNSName    = 254  // PASST_MAXDNAME: 253 (RFC 1035) and the NUL
	maxDNS        = 4    // MAXNS + 1 nameservers per family
	maxDNSRCH     = 6    // MAXDNSRCH search domains
	logSizeMinMul = 5    // LOGFILE_SIZE_MIN is 5 * max(BUFSIZ, PAGE_SIZE)
)

// ParseOption adjusts Parse.
type ParseOption func(*parser)

// WithExtra adds the caller's own long options to pasta's table. It
// panics if a name is empty or one of pasta's.
func WithExtra(opts ...ExtraOption) ParseOption {
	return func(p *parser) { p.extra = append(p.extra, opts...) }
}

// WithEphemeral sets the ephemeral port range (inclusive) that an
// exclusions-only port spec leaves out; see ParseEphemeral. Without it
// Parse assumes LinuxEphemeral.
func WithEphemeral(r [2]uint16) ParseOption {
	return func(p *parser) { p.ports.ephemeral = r }
}

// parser is one Parse: pasta's conf() state that is not in Options.
type parser struct {
	extra []ExtraOption
	ports portsParser

	netns, userns         string
	netnsGiven, netnsOnly bool
	dns4, dns6            [maxDNS]netip.Addr // -D slots, as pasta fills them
	dns4n, dns6n          int
	search                [maxDNSRCH]string // -S slots
	searchNext            int
}

// Parse parses pasta's arguments (args, without argv[0]) as pasta
// 2025_05_03 in pasta mode does, and returns the first error pasta would
// report: a *UsageError for getopt_long's, a *ConfigError for pasta's
// own, or an ExtraOption's Check error. argv0 is only used in the
// *UsageError messages, verbatim as glibc prints it.
//
// pasta parses in three passes: every option but -t/-u/-T/-U/-D, then
// -t/-u/-D, then (after checking the PID or command arguments) -T/-U; so
// an unknown option anywhere is reported before a bad port spec, and
// --no-tcp anywhere refuses -t. Parse follows that order. What pasta
// checks against the system as it goes (that -i names an interface, that
// --runas names a user, that -l and -P can be opened, that ports can be
// bound) is left to the caller.
//
// With Help, Version or PrintCapabilities set the Options are only what
// came before that option.
func Parse(argv0 string, args []string, popts ...ParseOption) (*Options, error) {
	p := &parser{ports: portsParser{ephemeral: LinuxEphemeral, mapped: map[byte]*portSet{}}}
	for _, f := range popts {
		f(p)
	}
	long := slices.Clone(longOpts)
	for i, e := range p.extra {
		if e.Name == "" || slices.ContainsFunc(longOpts, func(l longOpt) bool { return l.name == e.Name }) {
			panic(fmt.Sprintf("pasta: extra option %q is empty or one of pasta's", e.Name))
		}
		long = append(long, longOpt{e.Name, e.HasArg, optExtra + i})
	}

	// pasta picks its mode before parsing: --vhost-user anywhere makes
	// it passt's vhost-user back end, a different program.
	if selectsVhostUser(args) {
		return nil, die("vhost-user mode is not supported")
	}

	o := &Options{MTU: DefaultMTU, MAC: DefaultMAC}
	events, rest, uerr := getoptLong(argv0, args, optstring, long)

	// Pass 1: everything but the port specs and -D.
	for _, ev := range events {
		stop, err := p.pass1(o, ev)
		if err != nil {
			return nil, err
		}
		if stop {
			return o, nil
		}
	}
	if uerr != nil {
		return nil, uerr
	}
	if !o.ConfigNet {
		if o.NoCopyRoutes {
			return nil, die("--no-copy-routes needs --config-net")
		}
		if o.NoCopyAddrs {
			return nil, die("--no-copy-addrs needs --config-net")
		}
	}

	// Pass 2: inbound port specs and -D, in order.
	for _, ev := range events {
		var err error
		switch ev.id {
		case 't':
			err = p.ports.parse(o, &o.TCP, 't', ev.arg)
		case 'u':
			err = p.ports.parse(o, &o.UDP, 'u', ev.arg)
		case 'D':
			err = p.dns(o, ev.arg)
		}
		if err != nil {
			return nil, err
		}
	}
	o.DNS4 = p.dnsList(4)
	o.DNS6 = p.dnsList(6)

	// The PID or command.
	if err := p.target(o, rest); err != nil {
		return nil, err
	}
	if o.ConfigNet {
		o.NoRA = true // pasta configures the namespace itself: no RAs
	}

	// Pass 3: outbound port specs, once pasta is in the namespace.
	for _, ev := range events {
		var err error
		switch ev.id {
		case 'T':
			err = p.ports.parse(o, &o.TCPNs, 'T', ev.arg)
		case 'U':
			err = p.ports.parse(o, &o.UDPNs, 'U', ev.arg)
		}
		if err != nil {
			return nil, err
		}
	}

	// A search list stops at its first empty slot, which "-S none"
	// leaves behind (it empties the slots but keeps counting).
	for _, s := range p.search {
		if s == "" {
			break
		}
		o.Search = append(o.Search, s)
	}
	return o, nil
}

// pass1 applies one option of pasta's first pass; stop is set for the
// options that end parsing there (help, version, capabilities).
func (p *parser) pass1(o *Options, ev optEvent) (stop bool, err error) {
	arg := ev.arg
	switch ev.id {
	case optUserns:
		if arg == "" || len(arg) >= pathMax {
			return false, die("Invalid userns: %s", arg)
		}
		p.userns = arg
		p.netnsOnly = false
	case optNetns:
		path := arg
		if !strings.Contains(arg, "/") {
			path = NetnsRunDir + "/" + arg
		}
		switch {
		case len(path) > pathMax:
			return false, die("Network namespace name/path %s too long", arg)
		case len(path) == pathMax:
			path = path[:pathMax-1] // snprintf truncates; pasta only catches longer ones
		}
		p.netns, p.netnsGiven = path, true
	case optNsMAC:
		m, err := parseMAC(arg)
		if err != nil {
			return false, err
		}
		o.NsMAC, o.NsMACGiven = m, true
	case optDHCPDNS:
		o.DHCPDNS = true
	case optNoDHCPDNS:
		return false, die("--no-dhcp-dns is for passt mode only")
	case optDHCPSearch:
		o.DHCPSearch = true
	case optNoDHCPSearch:
		return false, die("--no-dhcp-search is for passt mode only")
	case optDNSForward:
		if a, ok := inetPton6(arg); ok && !in6Unspecified(a) && !in6Loopback(a) {
			o.DNSForward6 = a
		} else if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Broadcast(a) && !in4Loopback(a) {
			o.DNSForward4 = a
		} else {
			return false, die("Invalid DNS forwarding address: %s", arg)
		}
	case optNoNetnsQuit:
		o.NoNetnsQuit = true
	case optTrace:
		o.Trace, o.Debug, o.Quiet = true, true, false
	case optRunas:
		o.RunAs = arg
	case optLogSize:
		// strtol into a size_t: a negative size passes the minimum.
		v, _, erange := strtol(arg, 0)
		if size := uint64(v); erange || size < logSizeMinMul*uint64(max(8192, os.Getpagesize())) {
			return false, die("Invalid --log-size: %s", arg)
		}
		o.LogSize = uint64(v)
	case optVersion:
		o.Version = true
		return true, nil
	case optOutboundIf4, optOutboundIf6:
		if arg == "" || len(arg) >= ifNamSiz {
			return false, die("Invalid interface name: %s", arg)
		}
		if ev.id == optOutboundIf4 {
			o.OutboundIf4 = arg
		} else {
			o.OutboundIf6 = arg
		}
	case optConfigNet:
		o.ConfigNet = true
	case optNoCopyRoutes:
		o.Warnings = append(o.Warnings, "--no-copy-routes will be dropped soon")
		o.NoCopyRoutes = true
	case optNoCopyAddrs:
		o.Warnings = append(o.Warnings, "--no-copy-addrs will be dropped soon")
		o.NoCopyAddrs = true
	case optNetnsOnly:
		p.netnsOnly = true
		p.userns = ""
	case optMapHostLoopback:
		if arg == "none" {
			o.NoMapGW = true
		}
		if err := mapAddr(arg, &o.MapHostLoopback4, &o.MapHostLoopback6); err != nil {
			return false, err
		}
	case optMapGuestAddr:
		if err := mapAddr(arg, &o.MapGuestAddr4, &o.MapGuestAddr6); err != nil {
			return false, err
		}
	case optHostLoToNsLo:
		o.HostLoToNsLo = true
	case optDNSHost:
		if a, ok := inetPton6(arg); ok && !in6Unspecified(a) {
			o.DNSHost6 = a
		} else if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Broadcast(a) {
			o.DNSHost4 = a
		} else {
			return false, die("Invalid host nameserver address: %s", arg)
		}
	case optVhostUser: // Parse refused vhost-user mode already
		return false, die("vhost-user mode is not supported")
	case optPrintCapabilities:
		o.PrintCapabilities = true
		return true, nil
	case optFQDN:
		if len(arg) >= maxDNSName {
			return false, die("Invalid FQDN: %s", arg)
		}
		o.FQDN = arg
	case optRepairPath:
		if arg != "none" {
			return false, die("--repair-path is for vhost-user mode only")
		}
	case optNoTCP:
		o.NoTCP = true
	case optNoUDP:
		o.NoUDP = true
	case optNoICMP:
		o.NoICMP = true
	case optNoDHCP:
		o.NoDHCP = true
	case optNoDHCPv6:
		o.NoDHCPv6 = true
	case optNoNDP:
		o.NoNDP = true
	case optNoRA:
		o.NoRA = true
	case optNoSplice:
		o.NoSplice = true
	case optFreebind:
		o.FreeBind = true
	case optNoMapGW:
		o.NoMapGW = true
	case 'd':
		o.Debug, o.Quiet = true, false
	case 'e':
		o.Stderr = true
		o.Warnings = append(o.Warnings, "--stderr will be dropped soon")
	case 'l':
		o.LogFile = arg
	case 'q':
		o.Quiet, o.Debug, o.Trace = true, false, false
	case 'f':
		o.Foreground = true
	case 's':
		return false, die("-s is for passt / vhost-user mode only")
	case 'F':
		// No end check: "abc" is fd 0.
		v, _, erange := strtol(arg, 0)
		if erange || (v != 0 && v <= 2) || v > math.MaxInt32 {
			return false, die("Invalid --fd: %s", arg)
		}
		o.FD, o.FDGiven = int(v), true
	case 'I':
		if arg == "" || len(arg) >= ifNamSiz {
			return false, die("Invalid interface name: %s", arg)
		}
		o.NsIfname = arg
	case 'p':
		if arg == "" || len(arg) >= pathMax {
			return false, die("Invalid pcap path: %s", arg)
		}
		o.Pcap = arg
	case 'P':
		if arg == "" || len(arg) >= pathMax {
			return false, die("Invalid PID file: %s", arg)
		}
		o.PIDFile = arg
	case 'm':
		// strtoul base 0 with an end check, so "0x5dc" is 1500 and ""
		// is 0; "-1" wraps and is too large.
		v, n, erange := strtoul(arg, 0)
		if erange || n != len(arg) {
			return false, die("Invalid MTU: %s", arg)
		}
		if v > MaxMTU {
			return false, die("MTU %d too large (max %d)", v, MaxMTU)
		}
		o.MTU, o.MTUGiven = int(v), true
	case 'a':
		if a, ok := inetPton6(arg); ok && !in6Unspecified(a) && !in6Loopback(a) &&
			!in6V4Mapped(a) && !in6V4Compat(a) && !in6Multicast(a) {
			o.Address6 = a
		} else if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Broadcast(a) &&
			!in4Loopback(a) && !in4Multicast(a) {
			o.Address4 = a
		} else {
			return false, die("Invalid address: %s", arg)
		}
	case 'n':
		n, ok := ip4Prefix(arg)
		if !ok {
			return false, die("Invalid netmask: %s", arg)
		}
		o.Netmask, o.NetmaskGiven = n, true
	case 'M':
		m, err := parseMAC(arg)
		if err != nil {
			return false, err
		}
		o.MAC = m
	case 'g':
		if a, ok := inetPton6(arg); ok && !in6Unspecified(a) && !in6Loopback(a) {
			o.Gateway6 = a
		} else if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Broadcast(a) && !in4Loopback(a) {
			o.Gateway4 = a
		} else {
			return false, die("Invalid gateway address: %s", arg)
		}
	case 'i':
		o.Interface = arg
	case 'o':
		// IPv4 loopback is allowed here, unlike everywhere else.
		if a, ok := inetPton6(arg); ok && !in6Unspecified(a) && !in6Loopback(a) &&
			!in6V4Mapped(a) && !in6V4Compat(a) && !in6Multicast(a) {
			o.Outbound6 = a
		} else if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Broadcast(a) && !in4Multicast(a) {
			o.Outbound4 = a
		} else {
			return false, die("Invalid or redundant outbound address: %s", arg)
		}
	case 'S':
		if arg == "none" {
			o.SearchNone = true
			p.search = [maxDNSRCH]string{}
			break
		}
		o.SearchNone = false
		if p.searchNext >= maxDNSRCH || arg == "" || len(arg) >= maxDNSName {
			return false, die("Cannot use DNS search domain %s", arg)
		}
		p.search[p.searchNext] = arg
		p.searchNext++
	case 'H':
		if len(arg) >= maxDNSName {
			return false, die("Invalid hostname: %s", arg)
		}
		o.Hostname = arg
	case '4':
		o.IPv4Only, o.IPv6Only = true, false
	case '6':
		o.IPv6Only, o.IPv4Only = true, false
	case '1':
		return false, die("--one-off is for passt mode only")
	case 't', 'u', 'D', 'T', 'U':
		// Later passes.
	case 'h':
		o.Help = true
		return true, nil
	default:
		e := p.extra[ev.id-optExtra]
		if e.Check != nil {
			if err := e.Check(arg); err != nil {
				return false, err
			}
		}
		o.Extra = append(o.Extra, ExtraArg{Name: e.Name, Value: arg})
	}
	return false, nil
}

// mapAddr is pasta's conf_nat: "none" clears both families, else one
// address, neither unspecified, loopback nor multicast.
func mapAddr(arg string, a4, a6 *netip.Addr) error {
	if arg == "none" {
		*a4, *a6 = netip.Addr{}, netip.Addr{}
		return nil
	}
	if a, ok := inetPton6(arg); ok && !in6Unspecified(a) && !in6Loopback(a) && !in6Multicast(a) {
		*a6 = a
		return nil
	}
	if a, ok := inetPton4(arg); ok && !in4Unspecified(a) && !in4Loopback(a) && !in4Multicast(a) {
		*a4 = a
		return nil
	}
	return die("Invalid address to remap to host: %s", arg)
}

// ip4Prefix is pasta's conf_ip4_prefix: a contiguous dotted mask, or a
// length read by strtoul base 0 with no end check (so "24abc" is 24 and
// "abc" is 0).
func ip4Prefix(arg string) (int, bool) {
	if a, ok := inetPton4(arg); ok {
		b := a.As4()
		m := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		n := bits.OnesCount32(m)
		// pasta tests (mask << n) != 0 on a 32-bit value; for
		// 255.255.255.255 that is a shift by 32, which x86-64 and arm64
		// take modulo 32, so the all-ones mask is refused.
		if m<<(n%32) != 0 {
			return 0, false
		}
		return n, true
	}
	v, _, erange := strtoul(arg, 0)
	if v > 32 || erange {
		return 0, false
	}
	return int(v), true
}

// parseMAC is pasta's parse_mac: exactly "xx:xx:xx:xx:xx:xx", each
// octet read by strtoul base 16 that must stop after two characters
// (which lets " a" and "+a" through, as in pasta).
func parseMAC(s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, die("Invalid MAC address: %s", s)
	}
	for i := range m {
		v, n, erange := strtoul(s[3*i:], 16)
		end := byte(':')
		if i == len(m)-1 {
			end = 0
		}
		next := byte(0)
		if 3*i+n < len(s) {
			next = s[3*i+n]
		}
		if v > 255 || erange || n != 2 || next != end {
			return m, die("Invalid MAC address: %s", s)
		}
		m[i] = byte(v)
	}
	return m, nil
}

// dns is one -D in pasta's second pass.
func (p *parser) dns(o *Options, arg string) error {
	if arg == "none" {
		// pasta clears the --dns-forward and --dns-host addresses too,
		// and -D comes after them whatever the order on the command line.
		o.DNSNone = true
		p.dns4n, p.dns6n = 0, 0
		p.dns4, p.dns6 = [maxDNS]netip.Addr{}, [maxDNS]netip.Addr{}
		o.DNSForward4, o.DNSForward6 = netip.Addr{}, netip.Addr{}
		o.DNSHost4, o.DNSHost6 = netip.Addr{}, netip.Addr{}
		return nil
	}
	o.DNSNone = false
	if a, ok := inetPton4(arg); ok {
		if p.dns4n < maxDNS { // more are dropped silently
			p.dns4[p.dns4n] = a
			p.dns4n++
		}
		return nil
	}
	if a, ok := inetPton6(arg); ok {
		if p.dns6n < maxDNS {
			p.dns6[p.dns6n] = a
			p.dns6n++
		}
		return nil
	}
	return die("Cannot use DNS address %s", arg)
}

// dnsList is the nameservers of one family as pasta uses them: up to the
// first unspecified address.
func (p *parser) dnsList(family int) []netip.Addr {
	slots, n := p.dns4[:p.dns4n], 0
	if family == 6 {
		slots = p.dns6[:p.dns6n]
	}
	for n < len(slots) && !slots[n].IsUnspecified() {
		n++
	}
	if n == 0 {
		return nil
	}
	return slices.Clone(slots[:n])
}

// target is pasta's conf_pasta_ns: what the non-option arguments mean
// for the namespaces.
func (p *parser) target(o *Options, rest []string) error {
	if p.netnsGiven && len(rest) > 0 {
		return die("Both --netns and PID or command given")
	}
	if len(rest) == 1 {
		// strtol base 10 read whole: "" is PID 0, " 12" and "+12" are 12.
		if v, n, _ := strtol(rest[0], 10); n == len(rest[0]) {
			if v < 0 || v > math.MaxInt32 {
				return die("Invalid PID %s", rest[0])
			}
			o.PID, o.HasPID = int(v), true
			p.netns = fmt.Sprintf("/proc/%d/ns/net", v)
			if p.userns == "" {
				p.userns = fmt.Sprintf("/proc/%d/ns/user", v)
			}
		}
	}
	if p.netns != "" && p.userns == "" {
		p.netnsOnly = true
	}
	o.NetNS, o.UserNS, o.NetNSOnly = p.netns, p.userns, p.netnsOnly
	if len(rest) > 0 {
		o.Args = slices.Clone(rest)
	}
	return nil
}
