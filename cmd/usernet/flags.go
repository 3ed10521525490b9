package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/portfwd"
	"github.com/usernet/usernet/sandbox"
	"github.com/usernet/usernet/stack"
	"github.com/usernet/usernet/tap"
)

// options is the parsed command line, in the terms of slirp4netns 1.2's
// manual. Defaults are slirp4netns's.
type options struct {
	configure           bool
	exitFD, readyFD     int // -1: none
	mtu                 int
	apiSocket           string
	plan                netplan.Plan // from --cidr and --enable-ipv6; every address comes from here
	disableHostLoopback bool
	netnsType           string // "pid" or "path"
	usernsPath          string
	enableSandbox       bool
	enableSeccomp       bool
	outboundAddr        string // IPv4 or interface name
	outboundAddr6       string // IPv6 or interface name
	disableDNS          bool
	mac                 net.HardwareAddr
	dnsUpstream         string         // usernet: ADDR[:PORT]
	publish             []portfwd.Rule // usernet: -p/--publish, static forwards
	resolvConf          string         // usernet: where to read the upstream from
	pcap                string         // usernet, pasta's -p: capture the tap's frames to this file
	egress              egressOptions  // usernet: the egress policy's flags (egress.go)
	limits              stack.Limits   // usernet: the bounds on what the namespace can make usernet hold

	// Set by pasta's command line only (pasta.go).
	ipv6Only         bool // the tap gets no IPv4 address
	disableDHCP      bool
	disableRA        bool
	dhcpv6           bool             // serve DHCPv6 (stack.Config.DHCPv6)
	advertise        *stack.Advertise // DNS and search list of DHCP, DHCPv6 and RAs; nil: slirp4netns's
	hostname, fqdn   string           // DHCP's options 12, 81 and DHCPv6's 39 (-H, --fqdn)
	autoTCP, autoUDP bool             // forward the ports the namespace listens on
	// splice: TCP clients on the host's loopback are connected again from
	// inside the namespace (pasta's local path), to the guest's address,
	// or to its loopback with spliceToLoopback (--host-lo-to-ns-lo).
	splice, spliceToLoopback bool
	// nsToHost, nsToHostUDP: ports of the namespace's loopback forwarded
	// to the host's (pasta's -T, -U): namespace port → host port.
	nsToHost, nsToHostUDP map[uint16]uint16
	// nsAutoTCP, nsAutoUDP: every port the host listens on is forwarded
	// from the namespace's loopback (pasta's -T auto, -U auto).
	nsAutoTCP, nsAutoUDP bool
	// keepWhenGone: run on when the target goes (pasta's --no-netns-quit).
	keepWhenGone bool
	// loopbackUp: the namespace's lo is brought up also without
	// configure (pasta does, always).
	loopbackUp bool
	// publishErr says which option publish[i] came from when it cannot
	// be bound; nil: slirp4netns's --publish.
	publishErr func(i int, err error) error
	// runAs is who the process becomes once the network is ready and
	// every host port bound (pasta's --runas), when it does that itself:
	// the sandbox's re-executed image has switched before Go started.
	runAs *runAs
	// publishMany are forwards of every port but some (pasta's "-t ~25").
	publishMany []manyForward

	help, version bool

	// positionals
	pid     int
	path    string
	tapName string
}

const (
	maxMTU     = 65521
	defaultMTU = 1500
)

// usageError is a command line mistake: the message, then the usage text.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// newFlagSet declares every flag.
func newFlagSet(o *options, out io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("usernet", pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SortFlags = false
	fs.SetInterspersed(true)
	fs.BoolVarP(&o.configure, "configure", "c", false, "bring up the interface")
	fs.IntVarP(&o.exitFD, "exit-fd", "e", -1, "specify the FD for terminating usernet")
	fs.IntVarP(&o.readyFD, "ready-fd", "r", -1, "specify the FD to write to when the network is configured")
	fs.IntVarP(&o.mtu, "mtu", "m", defaultMTU, "specify MTU (default=1500, max=65521)")
	fs.BoolP("enable-ipv6", "6", false, "enable IPv6")
	fs.StringVarP(&o.apiSocket, "api-socket", "a", "", "specify API socket path")
	fs.String("cidr", "10.0.2.0/24", "specify network address CIDR (default=10.0.2.0/24)")
	fs.BoolVar(&o.disableHostLoopback, "disable-host-loopback", false, "prohibit connecting to 127.0.0.1:* on the host namespace")
	fs.StringVar(&o.netnsType, "netns-type", "pid", "specify network namespace type ([path|pid], default=pid)")
	fs.StringVar(&o.usernsPath, "userns-path", "", "specify user namespace path")
	fs.BoolVar(&o.enableSandbox, "enable-sandbox", false, "create a new mount namespace and root, and drop all caps except CAP_NET_BIND_SERVICE")
	fs.BoolVar(&o.enableSeccomp, "enable-seccomp", false, "enable seccomp to limit syscalls (an allow-list; others fail with EPERM)")
	fs.StringVar(&o.outboundAddr, "outbound-addr", "", "sets outbound ipv4 address (or interface) to bind to")
	fs.StringVar(&o.outboundAddr6, "outbound-addr6", "", "sets outbound ipv6 address (or interface) to bind to")
	fs.BoolVar(&o.disableDNS, "disable-dns", false, "disables the 10.0.2.3 (or configured internal ip) DNS forwarder")
	fs.String("macaddress", "", "specify the MAC address of the TAP (only valid with -c)")
	fs.VarP(new(stringList), "publish", "p", "forward a host port to the namespace, [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]; repeatable")
	fs.StringVar(&o.dnsUpstream, "dns-upstream", "", "DNS server the forwarder relays to, ADDR[:PORT] (default: first nameserver of --resolv-conf)")
	fs.StringVar(&o.resolvConf, "resolv-conf", "/etc/resolv.conf", "resolv.conf to take the DNS upstream from")
	fs.StringVar(&o.pcap, "pcap", "", "capture every frame of the tap to a pcap file")
	addEgressFlags(fs, &o.egress)
	addLimitFlags(fs)
	fs.String("target-type", "netns", "specify the target type ([netns], default=netns)")
	fs.BoolVarP(&o.help, "help", "h", false, "show this help and exit")
	fs.BoolVarP(&o.version, "version", "v", false, "show version and exit")
	fs.MarkHidden("target-type")
	return fs
}

// stringList is a repeatable flag's values, in order. pflag's StringArray
// formats its default, and its value again when read, through
// encoding/csv and a buffer each time: garbage that every start kept, as
// no collection runs in an idle instance.
type stringList []string

func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Type() string       { return "stringArray" }

// metavars name flag values in --help as slirp4netns's help does.
var metavars = map[string]string{
	"exit-fd": "FD", "ready-fd": "FD", "api-socket": "PATH", "netns-type": "TYPE",
	"userns-path": "PATH", "outbound-addr": "IPv4", "outbound-addr6": "IPv6",
	"macaddress": "MAC", "publish": "SPEC", "dns-upstream": "ADDR[:PORT]", "resolv-conf": "PATH", "target-type": "TYPE", "pcap": "FILE",
}

func usage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: usernet [OPTION]... PID|PATH TAPNAME\n")
	fmt.Fprintf(w, "       usernet run [OPTION]... -- COMMAND [ARG]...\n")
	fmt.Fprintf(w, "User-mode networking for unprivileged network namespaces.\n\n")
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		name := "--" + f.Name
		if f.Value.Type() != "bool" {
			mv := metavars[f.Name]
			if mv == "" {
				mv = strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
			}
			name += "=" + mv
		}
		if f.Shorthand != "" {
			name = "-" + f.Shorthand + ", " + name
		}
		fmt.Fprintf(w, "%-24s %s\n", name, f.Usage)
	})
}

// parseFlags parses argv (without the program name). positional says how
// many positional arguments are wanted: 2 for the slirp4netns form, 0 for
// `usernet run` (whose command comes after --).
func parseFlags(argv []string, out io.Writer, positional int) (*options, []string, error) {
	return parseFlagsMode(argv, out, positional, true)
}

func parseFlagsMode(argv []string, out io.Writer, positional int, interspersed bool) (*options, []string, error) {
	o := &options{}
	fs := newFlagSet(o, out)
	fs.SetInterspersed(interspersed)
	fs.Usage = func() {}
	if err := fs.Parse(argv); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			o.help = true
			return o, nil, nil
		}
		return nil, nil, &usageError{err.Error()}
	}
	if o.help || o.version {
		return o, nil, nil
	}
	if tt, _ := fs.GetString("target-type"); tt != "netns" {
		return nil, nil, fmt.Errorf("--target-type=%s is not supported (only netns)", tt)
	}
	if o.mtu <= 0 || o.mtu > maxMTU {
		return nil, nil, errors.New("MTU must be a positive integer (< 65522)")
	}
	if o.exitFD < -1 || (fs.Changed("exit-fd") && o.exitFD < 0) {
		return nil, nil, errors.New("exit-fd must be a non-negative integer")
	}
	if o.readyFD < -1 || (fs.Changed("ready-fd") && o.readyFD < 0) {
		return nil, nil, errors.New("ready-fd must be a non-negative integer")
	}
	cidr, _ := fs.GetString("cidr")
	ipv6, _ := fs.GetBool("enable-ipv6")
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		// slirp4netns's text, with the flag as given (netplan.Slirp
		// would print the prefix in its canonical form).
		return nil, nil, fmt.Errorf("invalid CIDR: %s", cidr)
	}
	if o.plan, err = netplan.Slirp(p, ipv6); err != nil {
		return nil, nil, err
	}
	if o.disableHostLoopback {
		o.plan.HostLoopback4, o.plan.HostLoopback6 = netip.Addr{}, netip.Addr{}
	}
	if mac, _ := fs.GetString("macaddress"); mac != "" {
		if !o.configure && positional > 0 {
			return nil, nil, &usageError{"--macaddr cannot be specified when --configure or -c is not specified"}
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, nil, fmt.Errorf("invalid --macaddress %q: want a 6-byte Ethernet address like 02:00:00:00:00:01", mac)
		}
		if hw[0]&1 != 0 {
			return nil, nil, fmt.Errorf("invalid --macaddress %q: a multicast address cannot be a device address", mac)
		}
		o.mac = hw
	}
	for _, spec := range *fs.Lookup("publish").Value.(*stringList) {
		r, err := portfwd.ParsePublish(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("--publish %s: %w", spec, err)
		}
		o.publish = append(o.publish, r)
	}
	if err = limitsFromFlags(fs, &o.limits); err != nil {
		return nil, nil, err
	}
	if o.dnsUpstream != "" && o.disableDNS {
		return nil, nil, errors.New("--dns-upstream and --disable-dns cannot be used together")
	}
	switch o.netnsType {
	case "pid", "path":
	default:
		return nil, nil, fmt.Errorf("--netns-type must be pid or path, not %q", o.netnsType)
	}
	if o.enableSeccomp && !sandbox.SeccompSupported() {
		return nil, nil, sandbox.ErrArch
	}
	if positional == 0 && (o.enableSandbox || o.enableSeccomp) {
		// The run form stays the parent of its command; re-executing it
		// into the sandbox would lose the child's exec.Cmd.
		return nil, nil, errors.New("--enable-sandbox and --enable-seccomp are not supported by usernet run")
	}

	args := fs.Args()
	if positional == 0 {
		return o, args, nil
	}
	switch {
	case len(args) < positional:
		return nil, nil, &usageError{"PID|PATH and TAPNAME are required"}
	case len(args) > positional:
		return nil, nil, &usageError{fmt.Sprintf("too many arguments: %q", args[positional:])}
	}
	if o.netnsType == "pid" {
		pid, err := strconv.Atoi(args[0])
		if err != nil || pid <= 0 {
			return nil, nil, fmt.Errorf("PID must be a positive integer, not %q (use --netns-type=path for a path)", args[0])
		}
		o.pid = pid
	} else {
		o.path = args[0]
	}
	if err := tap.ValidateName(args[1]); err != nil {
		return nil, nil, err
	}
	o.tapName = args[1]
	return o, nil, nil
}
