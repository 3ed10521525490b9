package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/hostif"
	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/nsjoin"
	"github.com/usernet/usernet/portfwd"
	"github.com/usernet/usernet/sandbox"
	"github.com/usernet/usernet/stack"
)

// pasta's command line: usernet called as pasta (a symlink or copy), or as
// `usernet pasta ARGS`. frontend/pasta parses it exactly as pasta does;
// here it becomes the same options the slirp4netns command line makes,
// for the same core. docs/pasta.md says what differs from pasta.

// isPastaName reports whether argv0 selects pasta's command line, as pasta
// itself decides: its base name contains "pasta".
func isPastaName(argv0 string) bool { return strings.Contains(filepath.Base(argv0), "pasta") }

// pastaLocal4 is pasta's "local mode" plan when the host has no IPv4
// template interface: 169.254.2.1/16 with gateway .2.2.
var (
	pastaLocal4   = netip.MustParsePrefix("169.254.2.1/16")
	pastaLocalGW4 = netip.MustParseAddr("169.254.2.2")
)

// pastaExtra are usernet's own options on pasta's command line; made when
// asked for, not at init: a process that is not pasta keeps none of them.
func pastaExtra() []pasta.ExtraOption {
	return append([]pasta.ExtraOption{
		{Name: "api-socket", HasArg: true, Usage: "  --api-socket PATH\tserve slirp4netns's port forwarding API on a unix socket (usernet)\n"},
		{Name: "no-sandbox", Usage: "  --no-sandbox\t\tdo not confine the process (usernet; by default it is, as pasta confines itself)\n"},
	}, append(pastaEgressExtra(), pastaLimitOptions()...)...)
}

// pastaEgressExtra are the egress policy's flags on pasta's command line.
func pastaEgressExtra() []pasta.ExtraOption {
	var out []pasta.ExtraOption
	for _, d := range egressFlags {
		head := "  --" + d.name
		if !d.isBool {
			head += " " + d.metavar
		}
		out = append(out, pasta.ExtraOption{Name: d.name, HasArg: !d.isBool, Usage: head + "\t" + d.usage + " (usernet)\n"})
	}
	return out
}

// pastaState is what a pasta-style invocation needs beyond its options,
// also across the sandbox's re-execution (sandboxState.Pasta).
type pastaState struct {
	Template hostif.Template // the host's, read before the sandbox hides netlink
	Detached bool            // the background process of a detached invocation
	// Ephemeral is the host's ephemeral port range, which "-t ~25"
	// leaves out, read before the sandbox hides /proc.
	Ephemeral [2]uint16
	LogFD     int `json:",omitempty"` // where stdout and stderr go once ready (Detached)
	log       *os.File
}

// ready is what a pasta-style invocation does once the network is ready:
// the background process lets the foreground one return.
func (ps *pastaState) ready() error {
	if ps.Detached {
		return detachedReady(ps.log)
	}
	return nil
}

func pastaMain(argv0 string, args []string, stdout, stderr io.Writer) int {
	detached := isDetached()
	eph := pasta.FallbackEphemeral
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		eph, _ = pasta.ParseEphemeral(b)
	}
	po, err := pasta.Parse(argv0, args, pasta.WithEphemeral(eph), pasta.WithExtra(pastaExtra()...))
	var ue *pasta.UsageError
	var ce *pasta.ConfigError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, ue.Msg)
		pasta.Usage(stderr, argv0, pastaExtra()...)
		return 1
	case errors.As(err, &ce):
		fmt.Fprintln(stderr, ce.Msg)
		return 1
	case err != nil:
		fmt.Fprintln(stderr, err)
		return 1
	case po.Help:
		pasta.Usage(stdout, argv0, pastaExtra()...)
		return 0
	case po.Version:
		// Podman shows this line in `podman info`; rootlesskit only needs
		// the exit status (also of `--host-lo-to-ns-lo --version`).
		fmt.Fprintf(stdout, "pasta (usernet %s, commit %s)\n", version, commit)
		return 0
	}
	if !detached {
		for _, w := range po.Warnings {
			fmt.Fprintln(stderr, w)
		}
	}
	tmpl, err := hostif.Find(po.Interface)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	o, t, err := pastaOptions(po, tmpl)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	warn := stderr
	if detached {
		warn = io.Discard // the foreground process warned
	}
	if o.runAs, err = pastaRunAs(po.RunAs, po.RunAs != "", warn); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if po.NetNS == "" {
		// No target: new namespaces running the command, or a shell.
		cmd := po.Args
		if len(cmd) == 0 {
			shell := os.Getenv("SHELL")
			if shell == "" {
				shell = "/bin/sh"
			}
			cmd = []string{shell}
		}
		// pasta's SIGTERM and SIGQUIT end pasta at once, exit status 0;
		// the command goes on without a network.
		return runCommand(o, cmd, argv0, []os.Signal{syscall.SIGTERM, syscall.SIGQUIT}, stderr)
	}
	if !po.Foreground && !detached {
		return detach(po.PIDFile, stderr)
	}
	ps := &pastaState{Template: tmpl, Detached: detached, Ephemeral: eph}
	if detached {
		if ps.log, err = openLogTarget(po.LogFile); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer ps.log.Close()
	} else if po.PIDFile != "" {
		// Written now, not once ready: the sandbox may not show its
		// directory then. The PID is the same.
		if err := writePIDFile(po.PIDFile, os.Getpid()); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	out := output{stdout: stdout, stderr: stderr, noSettings: true}
	if sandboxConfig(o).Enabled() {
		return serveSandboxed(o, t, out, ps)
	}

	ctx, stop := notifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	defer stop()
	err = serve(ctx, o, t, out, ps.ready)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	return 0
}

// pastaOptions turns pasta's options into usernet's: the host's template
// interface copied into the address plan, the forwards, the target.
func pastaOptions(po *pasta.Options, tmpl hostif.Template) (*options, nsjoin.Target, error) {
	o := &options{
		configure:  po.ConfigNet,
		exitFD:     -1,
		readyFD:    -1,
		mtu:        po.MTU,
		resolvConf: "/etc/resolv.conf",
		ipv6Only:   po.IPv6Only,
		// pasta serves DHCP only when asked to configure nothing; with
		// --config-net it turns router advertisements off (NoRA).
		disableDHCP: po.NoDHCP,
		disableRA:   po.NoRA || po.NoNDP,
		// pasta's local path for clients on the host's loopback.
		splice:           !po.NoSplice,
		spliceToLoopback: po.HostLoToNsLo,
		keepWhenGone:     po.NoNetnsQuit,
		loopbackUp:       true,
	}
	var t nsjoin.Target
	switch {
	case po.FDGiven:
		// passt's: a connected socket to a VM's frames in place of the
		// tap (qemu's -netdev stream). pasta accepts it but has no VM.
		return nil, t, errors.New("-F/--fd is not supported by usernet's pasta command line: it hands passt a VM's socket in place of the tap, which pasta mode has no use for")
	case unsupported(po) != "":
		return nil, t, fmt.Errorf("%s is not supported by usernet's pasta command line yet", unsupported(po))
	}
	if v, ok := po.ExtraValue("api-socket"); ok {
		o.apiSocket = v
	}
	var err error
	if err = limitsFromPasta(po, &o.limits); err != nil {
		return nil, t, err
	}
	// pasta serves frames from any source, hosts behind the namespace
	// too (a Podman bridge network without NAT); the check is on only
	// when --allow-source names what the namespace routes.
	o.limits.AnySource = len(o.limits.AllowSources) == 0
	// pasta always confines itself; so does usernet here, unless asked
	// not to.
	if _, off := po.ExtraValue("no-sandbox"); !off {
		o.enableSandbox, o.enableSeccomp = true, sandbox.SeccompSupported()
	}
	for _, x := range po.Extra {
		if isEgressFlag(x.Name) {
			if err := o.egress.add(x.Name, x.Value); err != nil {
				return nil, t, err
			}
		}
	}
	o.pcap = po.Pcap
	if po.NsMACGiven {
		o.mac = po.NsMAC[:]
	}
	if o.plan, err = pastaPlan(po, tmpl); err != nil {
		return nil, t, err
	}
	// DHCPv6 hands out the guest's IPv6 address, when there is one.
	o.dhcpv6 = !po.NoDHCPv6 && o.plan.Guest6.IsValid()
	o.advertise = pastaAdvertise(po, o.plan)
	o.hostname, o.fqdn = po.Hostname, po.FQDN
	if !o.plan.Net4.Contains(o.plan.Gateway4) {
		// -a without -g: the host's gateway, outside the guest's
		// network, reached through the routes copied (pasta's DHCP
		// would send a classless route to it; usernet's serves none).
		o.disableDHCP = true
	}
	o.tapName = po.NsIfname
	if o.tapName == "" {
		o.tapName = tmpl.V4.Ifname
		if o.tapName == "" || po.IPv6Only {
			o.tapName = tmpl.V6.Ifname
		}
		if o.tapName == "" {
			o.tapName = "tap0"
		}
	}

	// DNS: answered at --dns-forward, relayed to --dns-host or the host's
	// resolv.conf. Without --dns-forward pasta answers DNS nowhere.
	o.disableDNS = !o.plan.DNS4.IsValid() && !o.plan.DNS6.IsValid()
	if a := po.DNSHost4; a.IsValid() {
		o.dnsUpstream = a.String()
	} else if a := po.DNSHost6; a.IsValid() {
		o.dnsUpstream = a.String()
	}
	if po.Outbound4.IsValid() {
		o.outboundAddr = po.Outbound4.String()
	} else if po.OutboundIf4 != "" {
		o.outboundAddr = po.OutboundIf4
	}
	if po.Outbound6.IsValid() {
		o.outboundAddr6 = po.Outbound6.String()
	} else if po.OutboundIf6 != "" {
		o.outboundAddr6 = po.OutboundIf6
	}

	// pasta's default for -t and -u is auto: the ports the namespace
	// listens on (autofwd). -T/-U auto is not done (docs/pasta.md).
	o.autoTCP, o.autoUDP = po.TCP.Auto() && !po.NoTCP, po.UDP.Auto() && !po.NoUDP
	var origin []string // the option each forward came from, for errors
	for _, f := range []struct {
		proto string
		opt   string
		fwd   *pasta.Forward
	}{{"tcp", "-t", &po.TCP}, {"udp", "-u", &po.UDP}} {
		if f.fwd.Auto() {
			continue
		}
		for _, r := range f.fwd.Ranges {
			if r.Weak {
				o.publishMany = addWeak(o.publishMany, f.proto, f.opt, r, f.fwd, o.plan, po)
				continue
			}
			for port := int(r.First); port <= int(r.Last); port++ {
				to, _ := f.fwd.Target(uint16(port))
				m := pasta.Mapping{BindAddr: r.BindAddr, BindIfname: r.BindIfname, Port: uint16(port), To: to}
				for _, rule := range pastaRules(f.proto, m, o.plan, po) {
					o.publish = append(o.publish, rule)
					origin = append(origin, f.opt+" "+r.Spec)
				}
			}
		}
	}
	o.publishErr = func(i int, err error) error {
		// pasta's text: "Failed to bind port 80 (Address already in use)
		// for option '-t 80'".
		why := err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			why = errno.Error()
			why = strings.ToUpper(why[:1]) + why[1:]
		}
		return fmt.Errorf("Failed to bind port %d (%s) for option '%s'", o.publish[i].HostPort, why, origin[i])
	}

	if po.HasPID {
		t.PID = po.PID
	} else {
		t.NetnsPath = po.NetNS
		if !po.NetNSOnly {
			t.UsernsPath = po.UserNS
		}
	}
	o.pid, o.path, o.usernsPath = t.PID, t.NetnsPath, t.UsernsPath
	o.nsAutoTCP = po.TCPNs.Auto() && !po.NoTCP
	o.nsAutoUDP = po.UDPNs.Auto() && !po.NoUDP
	if po.TCPNs.Mode == pasta.ModeSpec && !po.NoTCP {
		o.nsToHost = map[uint16]uint16{}
		for m := range po.TCPNs.Mappings() {
			o.nsToHost[m.Port] = m.To
		}
	}
	if po.UDPNs.Mode == pasta.ModeSpec && !po.NoUDP {
		o.nsToHostUDP = map[uint16]uint16{}
		for m := range po.UDPNs.Mappings() {
			o.nsToHostUDP[m.Port] = m.To
		}
	}
	return o, t, nil
}

// unsupported names the first option given that usernet does not do yet,
// or "".
func unsupported(po *pasta.Options) string {
	switch {
	case po.Interface != "" && (po.OutboundIf4 != "" || po.OutboundIf6 != ""):
		return "-i with --outbound-if4/6"
	}
	return ""
}

// pastaPlan copies the host's template interface into the address plan,
// as pasta does: the guest gets the host's own address, prefix and
// gateway for each family (or -a, -n, -g), the gateway reaches the host's
// loopback unless --no-map-gw, and the network is mirrored, not virtual.
func pastaPlan(po *pasta.Options, tmpl hostif.Template) (netplan.Plan, error) {
	var p netplan.Plan

	guest, bits, gw := tmpl.V4.Addr.Addr(), tmpl.V4.Addr.Bits(), tmpl.V4.Gateway
	p.HostAddr4, p.HostAddr6 = tmpl.V4.Addr.Addr(), tmpl.V6.Addr.Addr()
	if po.Address4.IsValid() {
		guest = po.Address4
		bits, _ = po.Prefix4()
	}
	if po.Gateway4.IsValid() {
		gw = po.Gateway4
	}
	local := !guest.IsValid() || !gw.IsValid()
	if local {
		// No usable IPv4 template: pasta's local mode.
		guest, bits, gw = pastaLocal4.Addr(), pastaLocal4.Bits(), pastaLocalGW4
	}
	// --config-net copies every address of the template interface
	// unless -a gives one, and every route through it unless -g gives
	// the default one.
	// pasta sets a broadcast address only in the copies that have one.
	p.NoBroadcast4 = true
	if !po.Address4.IsValid() && !local {
		p.Addrs4, p.NoBroadcast4 = tmpl.V4.Addrs, tmpl.V4.NoBroadcast
	}
	routes4 := tmpl.V4.Routes
	if po.Gateway4.IsValid() || local {
		routes4 = []netplan.Route{{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: gw}}
	}
	p.Net4 = netip.PrefixFrom(guest, bits).Masked()
	p.Guest4, p.Gateway4 = guest, gw
	// The network is the host's own only when it was copied: a network
	// given with -a is as virtual as slirp4netns's, and none of its
	// addresses may be dialed on the host (pasta would).
	p.Mirror = tmpl.V4.Addr.IsValid() && p.Net4 == tmpl.V4.Addr.Masked()
	p.DHCPStart4, p.DHCPSize = guest, 1
	p.DNS4 = po.DNSForward4
	p.HostLoopback4 = po.HostLoopbackMap(false, gw)
	p.GuestAlias4 = po.MapGuestAddr4

	guest6, bits6, gw6 := tmpl.V6.Addr.Addr(), tmpl.V6.Addr.Bits(), tmpl.V6.Gateway
	if po.Address6.IsValid() {
		guest6, bits6 = po.Address6, 64
	}
	if po.Gateway6.IsValid() {
		gw6 = po.Gateway6
	}
	if !po.IPv4Only && guest6.IsValid() && gw6.IsValid() {
		p.Net6 = netip.PrefixFrom(guest6, bits6).Masked()
		p.Mirror6 = tmpl.V6.Addr.IsValid() && p.Net6 == tmpl.V6.Addr.Masked()
		p.Guest6, p.Gateway6 = guest6, gw6
		// The stack's link-local address: the router's when it is
		// link-local, else the host's own on that interface.
		p.Router6 = tmpl.V6.LinkLocal
		if gw6.IsLinkLocalUnicast() || !p.Router6.IsValid() {
			p.Router6 = gw6
		}
		if !p.Router6.IsLinkLocalUnicast() {
			p.Router6 = netip.MustParseAddr("fe80::1")
		}
		p.DNS6 = po.DNSForward6
		p.HostLoopback6 = po.HostLoopbackMap(true, gw6)
		p.GuestAlias6 = po.MapGuestAddr6
		if !po.Address6.IsValid() {
			p.Addrs6 = tmpl.V6.Addrs
		}
		routes6 := tmpl.V6.Routes
		if po.Gateway6.IsValid() || len(routes6) == 0 {
			routes6 = []netplan.Route{{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Gateway: gw6}}
		}
		p.Routes = append(p.Routes, routes6...)
	}
	if len(routes4) == 0 {
		routes4 = []netplan.Route{{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: gw}}
	}
	p.Routes = append(routes4[:len(routes4):len(routes4)], p.Routes...)
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("addresses copied from the host: %w", err)
	}
	return p, nil
}

// pastaAdvertise is what DHCP, DHCPv6 and router advertisements name as
// DNS servers and search list. pasta names none unless --dhcp-dns, and no
// search list unless --dhcp-search; then, for each family, -D's
// addresses, else the --dns-forward address: usernet's forwarder, which
// follows the host's resolv.conf (pasta would name the resolv.conf's
// nameservers themselves); and -S's domains.
func pastaAdvertise(po *pasta.Options, plan netplan.Plan) *stack.Advertise {
	a := &stack.Advertise{}
	if po.DHCPDNS && !po.DNSNone {
		a.DNS4, a.DNS6 = po.DNS4, po.DNS6
		if len(a.DNS4) == 0 && plan.DNS4.IsValid() {
			a.DNS4 = []netip.Addr{plan.DNS4}
		}
		if len(a.DNS6) == 0 && plan.DNS6.IsValid() {
			a.DNS6 = []netip.Addr{plan.DNS6}
		}
		if !plan.IPv6() {
			a.DNS6 = nil
		}
	}
	if po.DHCPSearch && !po.SearchNone {
		a.Search = po.Search
	}
	return a
}

// manyForward is one exclusions-only spec of -t or -u ("~25"): its ports,
// bound together, and pasta's messages for it.
type manyForward struct {
	many portfwd.Many
	opt  string // "-t ~25"
}

// err is pasta's message for a failure to bind the spec's ports.
func (m manyForward) err(err error) error {
	if errors.Is(err, portfwd.ErrNoFiles) {
		return fmt.Errorf("Can't open enough sockets for port specifier: %s", m.opt[3:])
	}
	return fmt.Errorf("Failed to bind any port for '%s': %w", m.opt, err)
}

// addWeak adds the ports of r, a range of an exclusions-only spec, to the
// forward of its spec in ms (a new one for its first range). Without a
// bind address pasta listens on dual-stack sockets.
func addWeak(ms []manyForward, proto, opt string, r pasta.PortRange, fwd *pasta.Forward, plan netplan.Plan, po *pasta.Options) []manyForward {
	host := r.BindAddr
	if !host.IsValid() || host.IsUnspecified() {
		switch {
		case po.IPv6Only:
			host = netip.IPv6Unspecified()
		case !plan.IPv6():
			host = netip.IPv4Unspecified()
		default:
			host = netip.Addr{} // both
		}
	}
	opt += " " + r.Spec
	if n := len(ms); n == 0 || ms[n-1].opt != opt || ms[n-1].many.Proto != proto ||
		ms[n-1].many.HostAddr != host || ms[n-1].many.HostIfname != r.BindIfname {
		ms = append(ms, manyForward{many: portfwd.Many{Proto: proto, HostAddr: host, HostIfname: r.BindIfname}, opt: opt})
	}
	m := &ms[len(ms)-1].many
	for p := int(r.First); p <= int(r.Last); p++ {
		to, _ := fwd.Target(uint16(p))
		m.Ports = append(m.Ports, portfwd.PortPair{Host: uint16(p), Guest: to})
	}
	return ms
}

// pastaRules turns one listening port of -t/-u into forwards: to the
// guest's address of the family the listener is of. Without a bind
// address pasta listens on both families.
func pastaRules(proto string, m pasta.Mapping, plan netplan.Plan, po *pasta.Options) []portfwd.Rule {
	rule := func(host netip.Addr) portfwd.Rule {
		return portfwd.Rule{Proto: proto, HostAddr: host, HostPort: m.Port, HostIfname: m.BindIfname, GuestPort: m.To}
	}
	if m.BindAddr.IsValid() && !m.BindAddr.IsUnspecified() {
		return []portfwd.Rule{rule(m.BindAddr)}
	}
	var rules []portfwd.Rule
	if !po.IPv6Only {
		rules = append(rules, rule(netip.IPv4Unspecified()))
	}
	if plan.IPv6() {
		rules = append(rules, rule(netip.IPv6Unspecified()))
	}
	return rules
}

// resumePasta rebuilds, in the sandbox, the options of a pasta-style
// invocation from its command line and the host's template read before.
func resumePasta(ps *pastaState) (*options, error) {
	args := os.Args[1:]
	if !isPastaName(os.Args[0]) {
		args = args[1:] // usernet pasta ...
	}
	po, err := pasta.Parse(os.Args[0], args, pasta.WithEphemeral(ps.Ephemeral), pasta.WithExtra(pastaExtra()...))
	if err != nil {
		return nil, err
	}
	o, _, err := pastaOptions(po, ps.Template)
	return o, err
}
