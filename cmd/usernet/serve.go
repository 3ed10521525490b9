package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/usernet/usernet/apisock"
	"github.com/usernet/usernet/autofwd"
	"github.com/usernet/usernet/dns"
	"github.com/usernet/usernet/internal/memtrim"
	"github.com/usernet/usernet/internal/pollfd"
	"github.com/usernet/usernet/internal/procs"
	"github.com/usernet/usernet/internal/ratelog"
	"github.com/usernet/usernet/loopfwd"
	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/nsjoin"
	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/portfwd"
	"github.com/usernet/usernet/stack"
	"github.com/usernet/usernet/tap"
)

// output is where the slirp4netns-compatible lines go: the settings block
// on stdout, `received tapfd=N` on stderr. `usernet run` discards both.
type output struct {
	stdout, stderr io.Writer
	announce       bool // nsjoin.OpenTap prints `sent tapfd=N for TAP`
	// noSettings leaves out slirp4netns's lines (`received tapfd=N`, the
	// settings block): pasta's command line prints none of them.
	noSettings bool
}

var (
	errExitFD     = errors.New("exit fd closed")
	errTargetGone = errors.New("target is gone")
)

// serve is the whole life of one virtual network: get the tap, build the
// stack, report ready, and run until ctx ends, the exit fd fires or the
// target goes away. onReady, if set, runs once the network is ready.
func serve(ctx context.Context, o *options, t nsjoin.Target, out output, onReady func() error) error {
	p, err := prepare(ctx, o, t, out)
	if err != nil {
		return err
	}
	defer p.close()
	return p.run(ctx, out, onReady)
}

// prepared is what serving needs from the host's view of the system: the
// resolved settings and the open fds. prepare gathers it before the sandbox
// (which hides the host's filesystem and forbids netlink), run uses it,
// possibly in a re-executed, sandboxed image of this process (sandbox.go).
type prepared struct {
	o          *options
	t          nsjoin.Target
	upstream   netip.AddrPort    // the DNS forwarder's upstream; invalid with --disable-dns
	resolvConf string            // the resolv.conf upstream follows (absolute); "" for --dns-upstream or --disable-dns
	out4, out6 netip.Addr        // --outbound-addr, --outbound-addr6 resolved
	ready      *os.File          // --ready-fd, or nil
	exit       *os.File          // --exit-fd, or nil
	watch      *nsjoin.Watch     // the target's watch
	tap        *os.File          // the tap's fd; nil once the stack owns it
	procNet    []*os.File        // the namespace's /proc/net files, for autoTCP/autoUDP
	hostNet    []*os.File        // the host's /proc/net/{tcp,tcp6,udp,udp6}, for nsAutoTCP/nsAutoUDP
	broker     *nsjoin.Broker    // makes sockets in the namespace, for splice
	pasta      *pastaState       // pasta's command line only
	vnetHdr    bool              // tap opened with IFF_VNET_HDR and offloads (off only in debug builds)
	api        *net.UnixListener // --api-socket, bound before the sandbox; nil once the server owns it
	apiUIDs    []uint32          // who may use it (apisock.Config.AllowUIDs); nil: the default
	pcap       *os.File          // --pcap's file, or nil
	egress     *policy.Config    // the egress policy, files read and host addresses listed; nil for none
}

// prepare checks the settings, opens the ready and exit fds and the target
// watch, and gets the tap from the nsjoin child.
func prepare(ctx context.Context, o *options, t nsjoin.Target, out output) (_ *prepared, err error) {
	p := &prepared{o: o, t: t}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if p.out4, p.out6, err = outboundAddrs(o); err != nil {
		return nil, err
	}
	if !o.disableDNS {
		p.upstream, err = dnsUpstream(o)
		if err != nil {
			return nil, err
		}
		if err := upstreamOutside(o.plan)(p.upstream); err != nil {
			return nil, fmt.Errorf("%w; set --dns-upstream", err)
		}
		if o.dnsUpstream == "" {
			// Followed from now on (dns.Config.ResolvConf), also from
			// inside the sandbox, whose working directory is another.
			if p.resolvConf, err = filepath.Abs(o.resolvConf); err != nil {
				return nil, fmt.Errorf("--resolv-conf: %w", err)
			}
		}
	}
	if p.ready, err = inheritedFD(o.readyFD, "ready-fd"); err != nil {
		return nil, err
	}
	if p.exit, err = inheritedFD(o.exitFD, "exit-fd"); err != nil {
		return nil, err
	}
	if p.watch, err = nsjoin.NewWatch(t); err != nil {
		return nil, err
	}
	if o.apiSocket != "" {
		if p.api, err = apisock.Listen(o.apiSocket); err != nil {
			return nil, err
		}
	}
	if p.pcap, err = openPcap(o.pcap); err != nil {
		return nil, err
	}
	if p.egress, err = egressConfig(o); err != nil {
		return nil, err
	}

	p.vnetHdr = !debugNoOffload()
	req := nsjoin.Request{
		Tap:        tap.Options{Name: o.tapName, VnetHdr: p.vnetHdr},
		Configure:  o.configure,
		Announce:   out.announce,
		ProcNet:    o.autoTCP || o.autoUDP,
		LoopbackUp: o.loopbackUp,
	}
	if o.configure {
		req.Config = tap.Config{MTU: o.mtu, MAC: o.mac, Gateway: o.plan.Gateway4, NoBroadcast: o.plan.NoBroadcast4}
		v4, v6 := !o.ipv6Only, o.plan.Guest6.IsValid() // pasta's guest does not make its own IPv6 address
		if v4 {
			req.Config.Addrs = o.plan.GuestAddrs(false)
		} else {
			req.Config.Gateway = netip.Addr{}
		}
		if v6 {
			req.Config.Addrs = append(req.Config.Addrs, o.plan.GuestAddrs(true)...)
			req.Config.Gateway6 = o.plan.Gateway6
		}
		for _, r := range o.plan.Routes {
			if r.Dst.Addr().Is4() && v4 || r.Dst.Addr().Is6() && v6 {
				req.Config.Routes = append(req.Config.Routes, r)
			}
		}
	}
	opened, err := nsjoin.OpenTap(ctx, t, req)
	if err != nil {
		return nil, err
	}
	p.tap, p.procNet = opened.Tap, opened.ProcNet
	if o.nsAutoTCP || o.nsAutoUDP {
		// Opened now: the sandbox shows no /proc.
		for _, name := range nsjoin.ProcNetFiles {
			f, err := os.Open("/proc/self/net/" + name)
			if err != nil {
				return nil, fmt.Errorf("-T auto: %w", err)
			}
			p.hostNet = append(p.hostNet, f)
		}
	}
	if o.needsBroker() {
		if p.broker, err = nsjoin.StartBroker(t); err != nil {
			return nil, err
		}
	}
	if !out.noSettings {
		fmt.Fprintf(out.stderr, "received tapfd=%d\n", p.tap.Fd())
	}
	return p, nil
}

// close releases whatever run has not taken over.
func (p *prepared) close() {
	for _, f := range append(append([]*os.File{p.tap, p.ready, p.exit, p.pcap}, p.procNet...), p.hostNet...) {
		if f != nil {
			f.Close()
		}
	}
	p.tap, p.ready, p.exit, p.pcap, p.procNet, p.hostNet = nil, nil, nil, nil, nil, nil
	if p.api != nil {
		p.api.SetUnlinkOnClose(true)
		p.api.Close()
		p.api = nil
	}
	if p.watch != nil {
		p.watch.Close()
		p.watch = nil
	}
	if p.broker != nil {
		p.broker.Close()
		p.broker = nil
	}
}

// run builds the stack on the tap, reports ready, and serves until ctx
// ends, the exit fd fires or the target goes away.
func (p *prepared) run(ctx context.Context, out output, onReady func() error) error {
	o := p.o
	logf := lineLogger(out.stderr) // one writer for every component's lines
	// Lines that the guest or the network can trigger (a DHCP lease, a
	// failed flow, a dropped datagram) go through one rate-limited
	// logger whose goroutine writes them, never the data path.
	netLog := ratelog.New(func(line string) { logf("%s", line) }, netLogRate, netLogBurst, netLogSummary)
	defer netLog.Close() // last: after the stack and the forwards have stopped
	var egress *policy.Policy
	if p.egress != nil {
		var err error
		if egress, err = policy.New(*p.egress); err != nil {
			return fmt.Errorf("egress policy: %w", err)
		}
	}
	var serveDNS func(context.Context, net.PacketConn, net.Listener) error
	if !o.disableDNS {
		// The upstream follows resolv.conf as libslirp's does: a host
		// that changes networks rewrites it, and the namespace must not
		// keep asking a resolver that is gone.
		if o.enableSeccomp && o.dnsUpstream == "" && p.resolvConf == "" {
			logf("dns: not following %s: under --enable-seccomp that needs Landlock, which this kernel lacks; the upstream stays %v", o.resolvConf, p.upstream)
		}
		dcfg := dns.Config{
			Upstream:   p.upstream,
			ResolvConf: p.resolvConf,
			Check:      upstreamOutside(o.plan),
			Logf:       netLog.Logf,
		}
		if egress != nil {
			dcfg.Names = policyNames{egress}
		}
		fwd, err := dns.New(dcfg)
		if err != nil {
			return fmt.Errorf("dns forwarder: %w", err)
		}
		serveDNS = fwd.Serve
	}
	capture, closeCapture, err := startCapture(p.pcap, logf)
	if err != nil {
		return err
	}
	defer closeCapture() // after the stack has stopped: wg.Wait below
	if adaptProcs {
		// gVisor starts a TCP processor goroutine per P it sees: one per
		// core, for procs to run at once when it raises GOMAXPROCS (its
		// Run lowers it to 1 again).
		runtime.GOMAXPROCS(runtime.NumCPU())
	}
	st, err := stack.New(stack.Config{
		Tap:           p.tap,
		MTU:           uint32(o.mtu),
		VnetHdr:       p.vnetHdr,
		Plan:          o.plan,
		OutboundAddr:  p.out4,
		OutboundAddr6: p.out6,
		ServeDNS:      serveDNS,
		DisableDHCP:   o.disableDHCP,
		DisableRA:     o.disableRA,
		Limits:        o.limits,
		Egress:        egress,
		EgressRST:     o.egress.rst,
		DHCPv6:        o.dhcpv6,
		Advertise:     o.advertise,
		Hostname:      o.hostname,
		FQDN:          o.fqdn,
		// On unless turned off (stack/tcpdirect.go).
		DirectTCP: os.Getenv("USERNET_DIRECT_TCP") != "0",
		Logf:      netLog.Logf,
	})
	if err != nil {
		return fmt.Errorf("netstack: %w", err) // close closes the tap
	}
	p.tap = nil // the stack owns it now
	// --pcap and the API's live captures; installed before Run reads a frame.
	captures := &captureHub{set: st.SetCapture, logf: logf, sandboxed: sandboxConfig(o).Enabled()}
	defer captures.stopAll()
	if capture != nil {
		captures.add(capture)
	}

	// Port forwarding: the registry dials into the namespace through the
	// stack; static --publish forwards are bound now, API ones on request.
	fwdCfg := portfwd.Config{Dialer: st, Plan: o.plan, Logf: netLog.Logf}
	if p.broker != nil && o.splice {
		fwdCfg.Splice = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			if o.spliceToLoopback {
				dst = netip.AddrPortFrom(loopbackOf(dst.Addr()), dst.Port())
			}
			return p.broker.DialTCP(ctx, dst)
		}
		fwdCfg.SpliceUDP = func(dst netip.AddrPort) (net.Conn, error) {
			if o.spliceToLoopback {
				dst = netip.AddrPortFrom(loopbackOf(dst.Addr()), dst.Port())
			}
			return p.broker.DialUDP(dst)
		}
	}
	reg := portfwd.New(fwdCfg)
	for i, r := range o.publish {
		if _, err := reg.Add(ctx, r); err != nil {
			st.Close()
			closeRegistry(reg)
			if o.publishErr != nil {
				return o.publishErr(i, err)
			}
			return fmt.Errorf("--publish: %w", err)
		}
	}
	// After the others: a port they bound is one these skip.
	for _, m := range o.publishMany {
		if _, err := reg.AddMany(ctx, m.many); err != nil {
			st.Close()
			closeRegistry(reg)
			return m.err(err)
		}
	}
	var api *apisock.Server
	if p.api != nil {
		acfg := apisock.Config{Path: o.apiSocket, Listener: p.api, Forwarder: reg, Logf: logf,
			Stats: statsSource{st: st, reg: reg, start: time.Now()}, Capture: captures, AllowUIDs: p.apiUIDs}
		if egress != nil {
			acfg.Policy, acfg.KillDenied = egress, st.KillDenied
		}
		api, err = apisock.New(acfg)
		if err != nil {
			st.Close()
			closeRegistry(reg)
			return err
		}
		p.api = nil // the server owns it now
	}
	debugProbeFS(out.stderr)
	if !out.noSettings {
		printSettings(out.stdout, o, p)
		if o.enableSeccomp {
			printSeccomp(out.stdout, p.resolvConf != "")
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer startDebugProfiles(logf)()
		err := st.Run(ctx)
		if err == nil && ctx.Err() == nil {
			err = errors.New("stopped unexpectedly")
		}
		if err != nil {
			cancel(fmt.Errorf("netstack: %w", err))
		}
	})
	// A burst of flows (a SYN flood, thousands of connections) leaves the
	// heap at its peak long after the flows have gone.
	wg.Go(func() { memtrim.Run(ctx, memTrimInterval, memTrimMin, memTrimIdleMin) })
	// One P for one connection's chain of hand-offs, every core for many
	// connections at once (main.go, oneProc).
	if adaptProcs {
		wg.Go(func() { procs.Run(ctx, procs.Config{Trace: debugProcsTrace(logf)}) })
	}
	wg.Go(func() {
		if err := reg.Run(ctx); err != nil {
			cancel(fmt.Errorf("port forwarding: %w", err))
		}
	})
	if p.broker != nil && (len(o.nsToHost) > 0 || len(o.nsToHostUDP) > 0 || len(p.hostNet) == len(nsjoin.ProcNetFiles)) {
		wg.Go(func() {
			loops := &nsLoopAuto{ctx: ctx, broker: p.broker, logf: logf, active: map[int][]io.Closer{}}
			defer loops.wg.Wait()
			// pasta's -T and -U with ports; like pasta, a port that cannot
			// be bound in the namespace is logged, not fatal (nothing can
			// check it in advance).
			for _, set := range []struct {
				proto, opt string
				ports      map[uint16]uint16
			}{{"tcp", "-T", o.nsToHost}, {"udp", "-U", o.nsToHostUDP}} {
				for port, to := range set.ports {
					if _, err := loops.Add(ctx, portfwd.Rule{Proto: set.proto, HostPort: port, GuestPort: to}); err != nil {
						logf("%s %d: %v", set.opt, port, err)
					}
				}
			}
			if len(p.hostNet) != len(nsjoin.ProcNetFiles) {
				<-ctx.Done()
				return
			}
			// -T auto and -U auto: every port the host listens on.
			err := autofwd.Run(ctx, autofwd.Config{
				TCP: o.nsAutoTCP, UDP: o.nsAutoUDP,
				TCP4: p.hostNet[0], TCP6: p.hostNet[1], UDP4: p.hostNet[2], UDP6: p.hostNet[3],
				Hosts: []netip.Addr{netip.IPv4Unspecified()}, // one Add per port; nsLoopAuto listens on both loopbacks
				// Not the ports forwarded the other way: they are
				// our own listeners, and would loop.
				Skip:      reg.Forwards,
				Forwarder: loops,
				Logf:      logf,
			})
			if err != nil {
				cancel(fmt.Errorf("-T/-U auto: %w", err))
			}
		})
	}
	if len(p.procNet) == len(nsjoin.ProcNetFiles) {
		wg.Go(func() {
			if err := autofwd.Run(ctx, autoConfig(o, p.procNet, reg, logf)); err != nil {
				cancel(fmt.Errorf("auto port forwarding: %w", err))
			}
		})
	}
	if api != nil {
		wg.Go(func() {
			if err := api.Run(ctx); err != nil {
				cancel(fmt.Errorf("api socket: %w", err))
			}
		})
	}
	if p.exit != nil {
		wg.Go(func() {
			if pollfd.Wait(ctx, int(p.exit.Fd())) == nil {
				cancel(errExitFD)
			}
		})
	}
	wg.Go(func() {
		if o.keepWhenGone {
			return
		}
		if p.watch.Wait(ctx) == nil {
			cancel(errTargetGone)
		}
	})

	if p.ready != nil {
		if _, err := p.ready.Write([]byte("1")); err != nil {
			cancel(fmt.Errorf("write ready-fd %d: %w", o.readyFD, err))
		}
		p.ready.Close()
		p.ready = nil
	}
	if o.runAs != nil {
		if err := o.runAs.drop(); err != nil {
			cancel(err)
		}
	}
	if onReady != nil {
		if err := onReady(); err != nil {
			cancel(err)
		}
	}
	<-ctx.Done()
	wg.Wait()
	switch err := context.Cause(ctx); {
	case errors.Is(err, errTargetGone):
		fmt.Fprintf(out.stderr, "usernet: %s is gone, exiting\n", p.t)
		return nil
	case errors.Is(err, errExitFD), errors.Is(err, context.Canceled):
		return nil
	default:
		return err
	}
}

// closeRegistry releases the sockets of a registry that never ran.
func closeRegistry(r *portfwd.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.Run(ctx)
}

// The rate of the lines the guest or the network triggers: a burst of
// netLogBurst, netLogRate a second after it, and the count of the lines
// beyond that at most every netLogSummary.
const (
	netLogRate    = 20
	netLogBurst   = 100
	netLogSummary = 10 * time.Second
)

// lineLogger returns a Logf that writes one line per call to w.
func lineLogger(w io.Writer) func(string, ...any) {
	var mu sync.Mutex
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "usernet: %s\n", fmt.Sprintf(format, args...))
	}
}

// inheritedFD checks and wraps an fd given on the command line.
func inheritedFD(fd int, name string) (*os.File, error) {
	if fd < 0 {
		return nil, nil
	}
	if !pollfd.IsOpen(fd) {
		return nil, fmt.Errorf("%s %d is not an open file descriptor", name, fd)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// printSettings prints slirp4netns's settings block, byte for byte.
func printSettings(w io.Writer, o *options, p *prepared) {
	a := &o.plan
	fmt.Fprintf(w, "Starting slirp\n")
	fmt.Fprintf(w, "* MTU:             %d\n", o.mtu)
	fmt.Fprintf(w, "* Network:         %s\n", a.Net4.Addr())
	fmt.Fprintf(w, "* Netmask:         %s\n", a.Netmask4())
	fmt.Fprintf(w, "* Gateway:         %s\n", a.Gateway4)
	if !o.disableDNS {
		fmt.Fprintf(w, "* DNS:             %s\n", a.DNS4)
		fmt.Fprintf(w, "* DNS upstream:    %s\n", p.upstream)
	}
	fmt.Fprintf(w, "* DHCP begin:      %s\n", a.DHCPStart4)
	fmt.Fprintf(w, "* DHCP end:        %s\n", a.DHCPEnd4())
	fmt.Fprintf(w, "* Recommended IP:  %s\n", a.Guest4)
	if o.apiSocket != "" {
		fmt.Fprintf(w, "* API Socket:      %s\n", o.apiSocket)
	}
	// As slirp4netns: the resolved address, also for an interface name.
	if p.out4.IsValid() {
		fmt.Fprintf(w, "* Outbound IPv4:    %s\n", p.out4)
	}
	if p.out6.IsValid() {
		fmt.Fprintf(w, "* Outbound IPv6:    %s\n", p.out6)
	}
	if a.IPv6() {
		fmt.Fprintf(w, "* IPv6 network:    %s (gateway %s, DNS %s)\n", a.Net6, a.Gateway6, a.DNS6)
	}
	if !o.disableHostLoopback {
		fmt.Fprintf(w, "WARNING: 127.0.0.1:* on the host is accessible as %s (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)\n", a.Gateway4)
	}
}

// upstreamOutside refuses a DNS upstream inside the virtual network: it
// would be dialled on the host network, a leak, never a resolver.
func upstreamOutside(plan netplan.Plan) func(netip.AddrPort) error {
	return func(ap netip.AddrPort) error {
		if plan.Virtual(ap.Addr()) {
			return fmt.Errorf("dns upstream %s is inside the virtual network", ap)
		}
		return nil
	}
}

// dnsUpstream picks the resolver the forwarder relays to.
func dnsUpstream(o *options) (netip.AddrPort, error) {
	if o.dnsUpstream != "" {
		ap, err := dns.ParseUpstream(o.dnsUpstream)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("--dns-upstream: %w", err)
		}
		return ap, nil
	}
	ap, err := dns.UpstreamFromResolvConf(o.resolvConf)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns upstream (set --dns-upstream, or --disable-dns): %w", err)
	}
	return ap, nil
}

// outboundAddrs resolves --outbound-addr and --outbound-addr6, each an
// address or the name of an interface whose address to use.
func outboundAddrs(o *options) (v4, v6 netip.Addr, err error) {
	if o.outboundAddr != "" {
		v4, err = resolveOutbound(o.outboundAddr, true)
		if err != nil {
			return v4, v6, fmt.Errorf("outbound-addr has to be valid ipv4 address or interface name: %w", err)
		}
	}
	if o.outboundAddr6 != "" {
		v6, err = resolveOutbound(o.outboundAddr6, false)
		if err != nil {
			return v4, v6, fmt.Errorf("outbound-addr6 has to be valid ipv6 address or interface name: %w", err)
		}
	}
	return v4, v6, nil
}

func resolveOutbound(s string, want4 bool) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Is4() != want4 || a.Is4In6() {
			return netip.Addr{}, fmt.Errorf("%s is of the wrong family", s)
		}
		return a, nil
	}
	ifi, err := net.InterfaceByName(s)
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", s, err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() == want4 && !ip.IsLinkLocalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no usable address of that family", s)
}

// autoConfig forwards the ports the namespace listens on (pasta's "auto")
// from the host's wildcard addresses, except those forwarded explicitly.
func autoConfig(o *options, files []*os.File, reg *portfwd.Registry, logf func(string, ...any)) autofwd.Config {
	hosts := []netip.Addr{netip.IPv4Unspecified()}
	if o.plan.IPv6() {
		hosts = append(hosts, netip.IPv6Unspecified())
	}
	explicit := map[string]bool{}
	for _, r := range o.publish {
		explicit[fmt.Sprintf("%s/%d", r.Proto, r.HostPort)] = true
	}
	return autofwd.Config{
		TCP: o.autoTCP, UDP: o.autoUDP,
		TCP4: files[0], TCP6: files[1], UDP4: files[2], UDP6: files[3],
		Hosts:     hosts,
		Skip:      func(proto string, port uint16) bool { return explicit[fmt.Sprintf("%s/%d", proto, port)] },
		Forwarder: reg,
		Logf:      logf,
	}
}

// needsBroker reports whether a forward may ever need a socket made in
// the namespace: a forward given, auto, or added through the API (the
// local path), or one from the namespace's loopback (-T, -U).
func (o *options) needsBroker() bool {
	local := o.splice && (len(o.publish) > 0 || len(o.publishMany) > 0 || o.autoTCP || o.autoUDP || o.apiSocket != "")
	return local || len(o.nsToHost) > 0 || len(o.nsToHostUDP) > 0 || o.nsAutoTCP || o.nsAutoUDP
}

// nsLoopAuto is pasta's -T and -U, also as an autofwd.Forwarder for their
// auto mode: a rule's HostPort gets a listener (TCP) or bound socket (UDP)
// on the namespace's 127.0.0.1 and ::1, made by the broker, that leads to
// the host's loopback at the rule's GuestPort.
type nsLoopAuto struct {
	ctx    context.Context
	broker *nsjoin.Broker
	logf   func(string, ...any)
	wg     sync.WaitGroup

	mu     sync.Mutex
	next   int
	active map[int][]io.Closer // guarded by mu
}

func (a *nsLoopAuto) Add(_ context.Context, r portfwd.Rule) (int, error) {
	var socks []io.Closer
	var first error
	for _, lo := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		at := netip.AddrPortFrom(lo, r.HostPort)
		var err error
		if r.Proto == "udp" {
			var c *net.UDPConn
			if c, err = a.broker.ListenUDP(at); err == nil {
				socks = append(socks, c)
				loopfwd.ServeUDP(a.ctx, &a.wg, loopfwd.UDPForward{Conn: c, HostPort: r.GuestPort}, a.logf)
			}
		} else {
			var ln net.Listener
			if ln, err = a.broker.ListenTCP(at); err == nil {
				socks = append(socks, ln)
				loopfwd.Serve(a.ctx, &a.wg, loopfwd.Forward{Listener: ln, HostPort: r.GuestPort}, a.logf)
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if len(socks) == 0 {
		return 0, first
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	a.active[a.next] = socks
	return a.next, nil
}

func (a *nsLoopAuto) Remove(id int) error {
	a.mu.Lock()
	socks := a.active[id]
	delete(a.active, id)
	a.mu.Unlock()
	for _, s := range socks {
		s.Close()
	}
	return nil
}

// loopbackOf is the loopback address of a's family.
func loopbackOf(a netip.Addr) netip.Addr {
	if a.Is6() {
		return netip.IPv6Loopback()
	}
	return netip.MustParseAddr("127.0.0.1")
}

// How often memtrim looks, the least heap beyond the live data it gives
// back while busy, and the least heap an idle collection needs: often and
// little enough when idle that the memory of a thousand connections goes
// back within seconds of their close (docs/performance.md).
const (
	memTrimInterval = time.Second
	memTrimMin      = 16 << 20
	memTrimIdleMin  = 4 << 20
)
