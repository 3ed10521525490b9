package pasta

import (
	"fmt"
	"net/netip"
)

// UsageError is a getopt_long error: Msg is the line glibc prints, argv[0]
// first (e.g. "/usr/bin/pasta: unrecognized option '--foo'"). pasta
// prints it, then the usage text, both to stderr, and exits 1.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// ConfigError is a pasta die(): Msg is printed as is on stderr, with no
// program-name prefix, and pasta exits 1.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func die(format string, a ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, a...)}
}

// MAC is an Ethernet address.
type MAC [6]byte

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// Defaults pasta starts from.
var (
	// DefaultMAC is pasta's own MAC on the tap (a locally administered
	// address).
	DefaultMAC = MAC{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
)

const (
	// DefaultMTU is 65535 minus the Ethernet header, rounded down to 4.
	DefaultMTU = 65520
	// MaxMTU is the largest -m pasta takes: 65535 minus the Ethernet
	// header.
	MaxMTU = 65521
	// NetnsRunDir is where a --netns NAME (no '/') lives, as for ip-netns.
	NetnsRunDir = "/run/netns"
)

// Options is pasta's command line, parsed. Each field says which option
// sets it; where pasta keeps "the last one given", so does the field.
type Options struct {
	// Early exits: pasta acts on these as soon as its parser reaches
	// them, so nothing after them was parsed or checked.
	Help              bool // -h, --help: usage to stdout, exit 0
	Version           bool // --version: version to stdout, exit 0
	PrintCapabilities bool // --print-capabilities: "{", `  "type": "net"`, "}" lines to stderr, exit 0

	// Logging and process.
	Debug      bool   // -d, --debug (also set by --trace; cleared by -q)
	Trace      bool   // --trace (cleared by -q)
	Quiet      bool   // -q, --quiet (cleared by -d and --trace)
	Foreground bool   // -f, --foreground
	Stderr     bool   // -e, --stderr: deprecated no-op, warns
	LogFile    string // -l, --log-file
	LogSize    uint64 // --log-size in bytes; 0: not given (pasta's default is 1 MiB)
	RunAs      string // --runas, unresolved: UID, UID:GID, LOGIN or LOGIN:GROUP
	PIDFile    string // -P, --pid
	Pcap       string // -p, --pcap
	FD         int    // -F, --fd; valid if FDGiven
	FDGiven    bool

	// The tap and its link.
	NsIfname   string // -I, --ns-ifname; "": the template interface's name (tap0 in local mode)
	MTU        int    // -m, --mtu; DefaultMTU unless MTUGiven; 0: don't assign
	MTUGiven   bool
	MAC        MAC // -M, --mac-addr: pasta's side; DefaultMAC if not given
	NsMAC      MAC // --ns-mac-addr, valid if NsMACGiven; else the kernel's random MAC
	NsMACGiven bool

	// Addresses: one per family, the last given wins; zero: not given.
	Address4, Address6 netip.Addr // -a, --address (in pasta: don't copy the host's addresses of that family)
	// Netmask is -n, --netmask as a prefix length, valid if NetmaskGiven
	// (pasta does not distinguish 0 from absent); see Prefix4.
	Netmask      int
	NetmaskGiven bool
	Gateway4     netip.Addr // -g, --gateway (in pasta: don't copy the host's routes of that family)
	Gateway6     netip.Addr
	Interface    string     // -i, --interface; unchecked (pasta dies right there with "Invalid interface name %s: <strerror>")
	Outbound4    netip.Addr // -o, --outbound
	Outbound6    netip.Addr
	OutboundIf4  string // --outbound-if4
	OutboundIf6  string // --outbound-if6
	IPv4Only     bool   // -4, --ipv4-only (the last of -4/-6 wins)
	IPv6Only     bool   // -6, --ipv6-only

	// Address translation. NoMapGW is set by --no-map-gw and by
	// --map-host-loopback none; see HostLoopbackMap.
	NoMapGW                            bool
	MapHostLoopback4, MapHostLoopback6 netip.Addr // --map-host-loopback ("none" clears both)
	MapGuestAddr4, MapGuestAddr6       netip.Addr // --map-guest-addr ("none" clears both; there is no default)
	DNSForward4, DNSForward6           netip.Addr // --dns-forward (cleared by any -D none)
	DNSHost4, DNSHost6                 netip.Addr // --dns-host (cleared by any -D none); zero: the host's first resolv.conf nameserver

	// DNS advertised to the namespace (pasta does so only with DHCPDNS /
	// DHCPSearch).
	DNS4, DNS6 []netip.Addr // -D, --dns, up to 4 per family in order; more are ignored
	DNSNone    bool         // the last -D was "none": no resolv.conf nameservers either
	Search     []string     // -S, --search, up to 6
	SearchNone bool         // the last -S was "none": no resolv.conf search list either
	DHCPDNS    bool         // --dhcp-dns
	DHCPSearch bool         // --dhcp-search
	Hostname   string       // -H, --hostname
	FQDN       string       // --fqdn

	// Protocols and servers.
	NoTCP, NoUDP, NoICMP bool // --no-tcp, --no-udp, --no-icmp
	NoDHCP               bool // --no-dhcp
	NoNDP                bool // --no-ndp
	NoDHCPv6             bool // --no-dhcpv6
	NoRA                 bool // --no-ra, and forced by --config-net
	FreeBind             bool // --freebind
	NoSplice             bool // --no-splice
	HostLoToNsLo         bool // --host-lo-to-ns-lo

	// Port forwarding; see Forward.
	TCP   Forward // -t, --tcp-ports: host → namespace
	UDP   Forward // -u, --udp-ports
	TCPNs Forward // -T, --tcp-ns: namespace → host loopback
	UDPNs Forward // -U, --udp-ns

	// The namespace.
	ConfigNet    bool // --config-net
	NoCopyRoutes bool // --no-copy-routes (deprecated; needs --config-net)
	NoCopyAddrs  bool // --no-copy-addrs (deprecated; needs --config-net)
	NoNetnsQuit  bool // --no-netns-quit
	// NetNS is the network namespace to join: --netns (a NAME without
	// '/' is NetnsRunDir/NAME), or /proc/PID/ns/net for a PID argument;
	// "": pasta makes new namespaces and runs Args (or a shell) in them.
	NetNS string
	// UserNS is the user namespace to join: --userns, else
	// /proc/PID/ns/user for a PID argument. It is not joined if
	// NetNSOnly.
	UserNS string
	// NetNSOnly: don't join (or create) a user namespace. Set by
	// --netns-only, and by a netns given without a userns.
	NetNSOnly bool
	// Args are the non-option arguments: a PID, or COMMAND [ARGS...].
	// PID is set when there is exactly one that strtol reads whole.
	Args   []string
	PID    int
	HasPID bool

	// Extra holds the caller's own options (WithExtra), in command-line
	// order.
	Extra []ExtraArg

	// Warnings are the warnings pasta prints while parsing, in its
	// order (it prints them even with --quiet).
	Warnings []string
}

// Prefix4 is the IPv4 prefix length pasta assigns along with Address4:
// -n when given and nonzero, else the classful length of the address
// (class A /8, B /16, C /24, else /32). Without an IPv4 -a pasta takes
// the template address's own prefix length and ignores -n; ok is then
// false.
func (o *Options) Prefix4() (bits int, ok bool) {
	if !o.Address4.IsValid() {
		return 0, false
	}
	if o.NetmaskGiven && o.Netmask != 0 {
		return o.Netmask, true
	}
	switch a := o.Address4.As4()[0]; {
	case a&0x80 == 0:
		return 8, true
	case a&0xc0 == 0x80:
		return 16, true
	case a&0xe0 == 0xc0:
		return 24, true
	}
	return 32, true
}

// HostLoopbackMap is the address in the namespace that pasta maps to the
// host's loopback for one family (v6 or not): --map-host-loopback's
// address for that family if given, else that family's gateway gw unless
// NoMapGW, else none (the zero Addr).
func (o *Options) HostLoopbackMap(v6 bool, gw netip.Addr) netip.Addr {
	given := o.MapHostLoopback4
	if v6 {
		given = o.MapHostLoopback6
	}
	switch {
	case given.IsValid():
		return given
	case o.NoMapGW:
		return netip.Addr{}
	}
	return gw
}

// ExtraOption is a long option the caller accepts beyond pasta's. It
// joins the option table after pasta's, so it takes part in prefix
// matching (and may make a prefix that was unique ambiguous).
type ExtraOption struct {
	Name   string // without "--"; must not be one of pasta's
	HasArg bool   // a required argument (pasta has no optional ones)
	// Check, if set, validates the argument when the parser reaches the
	// option, so its error comes in pasta's order; Parse returns the
	// error as is.
	Check func(arg string) error
	// Usage is printed verbatim (one or more whole lines) by Usage.
	Usage string
}

// ExtraArg is one occurrence of an ExtraOption.
type ExtraArg struct {
	Name  string
	Value string // "" for an option without argument
}

// ExtraValue returns the value of the last occurrence of the extra option
// name, and whether it was given.
func (o *Options) ExtraValue(name string) (string, bool) {
	for i := len(o.Extra) - 1; i >= 0; i-- {
		if o.Extra[i].Name == name {
			return o.Extra[i].Value, true
		}
	}
	return "", false
}
