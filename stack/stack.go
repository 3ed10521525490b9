// Package stack runs the gVisor netstack that terminates the namespace's
// traffic on the tap and proxies each flow to a real host socket.
//
// It owns the gVisor stack, every goroutine it or gVisor starts for a flow
// (one tracker, tracker.go) and every host socket of a flow. It must not
// import portfwd, apisock, dns or cmd: they sit on top of it (portfwd
// reaches the namespace through DialTCP/DialUDP, dns through
// Config.ServeDNS).
//
// # Data path, by file
//
//	namespace ─tap fd─► link.Tap ─► ethernet ─► filter.go ─► gVisor NIC (promiscuous, spoofing)
//
// filter.go sees every frame from the guest first. It drops frames from
// sources outside the virtual network (source.go), answers or drops what
// gVisor would get wrong as a transparent proxy (ARP and neighbor
// solicitations for foreign addresses, echo to any address), sends ICMP
// echo to ping.go, UDP of known flows to udpfast.go, DHCPv6 to dhcp6.go,
// notes SYNs for tcpunreach.go, and gives everything else to gVisor, whose
// forwarders hand each new flow to:
//
//	tcp.go       guest TCP: route, dial the host (hostsock.go), then complete
//	             the handshake and relay both ways (package relay);
//	             tcplimit.go bounds the attempts and connections
//	udp.go       guest UDP: one host socket per guest port, one gVisor
//	             endpoint per remote; udpfast.go writes known flows' datagrams
//	             from the filter, udpreply.go their replies to the tap
//	             itself; udperr.go turns host ICMP errors into ICMP;
//	             udplimits.go bounds the flows, ports and buffers
//	ping.go      ICMP echo → an unprivileged host ping socket, bounded
//	tcpdirect.go with Config.DirectTCP, the guest's outbound TCP from the
//	             filter straight to host sockets, without gVisor
//	route.go     where a flow may go: the single place that keeps traffic for
//	             the virtual network off the host's network
//	hostsock.go  every host socket of a flow is opened here
//
// The services of the virtual network: DNS at the plan's DNS address
// (Config.ServeDNS), DHCP (dhcp.go, protocol in package dhcp), DHCPv6
// (dhcp6.go, protocol in package dhcp6, answered from the link filter),
// router advertisements (ra.go); ICMP errors are built in packets.go.
//
// Host → namespace (port forwarding) is dialin.go: DialTCP and DialUDP make
// gVisor endpoints bound to a spoofed source (the real client's address or
// the gateway) and connected to the guest; the guest's replies match them
// before any forwarder sees them.
//
// # Lifetimes
//
// New builds the stack and binds the DNS and DHCP endpoints but starts
// nothing: the link is attached to its dispatcher only when Run starts.
// Every goroutine (forwarder handlers, flow copiers, the control loop,
// ServeDNS, the DHCP server), and every connection DialTCP/DialUDP
// returned, registers with one tracker; Run cancels the stack context,
// waits for the tracker, stops the link's dispatcher, destroys the gVisor
// stack and closes the tap, in that order.
package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/dhcp"
	"github.com/usernet/usernet/dhcp6"
	"github.com/usernet/usernet/link"
	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/relay"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Config describes one virtual network. The zero value of every optional
// field means "off" or "the slirp4netns default".
type Config struct {
	// Tap is the tap device's fd (IFF_TAP|IFF_NO_PI). The Stack owns it
	// from New on and closes it when Run returns (or in Close if Run never
	// ran). Exactly one of Tap and link (tests) is set.
	Tap *os.File

	// MTU of the link (the tap's MTU). 0 means 1500.
	MTU uint32

	// VnetHdr says Tap was opened with IFF_VNET_HDR and tap.Offloads:
	// frames carry virtio-net headers and TCP moves in segments of up to
	// 64 KiB with partial checksums, both ways (package link).
	VnetHdr bool

	// Capture, when not nil, is told every frame read from and written to
	// Tap (--pcap). It must not block for long: it runs on the data path.
	Capture link.Capture

	// Plan is the addresses of the virtual network. Required; New
	// validates it. Its HostLoopback addresses reach the host's 127.0.0.1
	// and ::1; a virtual network's gateway that maps none answers TCP and
	// UDP with ICMP net unreachable (ping is still answered). IPv6 in the
	// plan turns on router advertisements for SLAAC and IPv6 forwarding
	// to host sockets.
	Plan netplan.Plan

	// OutboundAddr and OutboundAddr6, when valid, are the local addresses
	// that host sockets for outbound traffic are bound to.
	OutboundAddr, OutboundAddr6 netip.Addr

	// ServeDNS, when not nil, is called by Run once per address family
	// with a packet conn and a listener bound to port 53 of the plan's
	// DNS4 (and DNS6). It must return when ctx ends. nil means
	// --disable-dns: DNS:53 gets no answer.
	ServeDNS func(ctx context.Context, pc net.PacketConn, ln net.Listener) error

	// DisableDHCP turns off the DHCP server. By default (as with
	// slirp4netns) a guest that does not configure itself gets an address
	// of the plan's DHCP pool with router Gateway4 and, when DNS is
	// served, DNS DNS4 (dhcp.go).
	DisableDHCP bool

	// DHCPv6 turns on the DHCPv6 server (pasta; slirp4netns has none): a
	// client on the tap gets Plan.Guest6, which must then be valid, and
	// router advertisements set the M flag (dhcp6.go).
	DHCPv6 bool

	// Advertise, when not nil, is what DHCP, DHCPv6 and router
	// advertisements name as DNS servers and search domains (pasta: only
	// with --dhcp-dns, --dhcp-search). nil: the plan's DNS4 and DNS6 when
	// DNS is served, and no search list (slirp4netns).
	Advertise *Advertise

	// Hostname and FQDN, when set, are the names DHCP gives the client
	// (options 12 and 81; pasta's -H and --fqdn); DHCPv6 gives FQDN
	// (option 39).
	Hostname, FQDN string

	// DisableRA turns off router advertisements (pasta's --no-ra, and
	// --config-net, which configures the guest's IPv6 itself).
	DisableRA bool

	// DialTimeout bounds each outbound TCP dial. 0 means 30s.
	DialTimeout time.Duration

	// AckDelay is how long the ACK of a small request from the guest may
	// wait for the answer to carry it (delayed ACK). 0 means 1 ms; a
	// negative value acknowledges every segment at once.
	AckDelay time.Duration

	// DirectTCP takes the guest's outbound TCP connections off gVisor:
	// the link filter relays them to host sockets itself, without
	// buffers of its own (tcpdirect.go). Off by default; it needs a tap
	// (link.Tap).
	DirectTCP bool

	// Limits bound the flows and memory a guest can make the stack hold.
	Limits Limits

	// Egress, when set, decides every new flow leaving for the host
	// (egress.go); EgressRST answers a denied TCP connection with a RST
	// instead of ICMP "administratively prohibited".
	Egress    *policy.Policy
	EgressRST bool

	// Logf receives diagnostics. nil discards them.
	Logf func(format string, args ...any)

	// Test seams, all unexported; the zero value is the production
	// behaviour.

	// host is the seam where a flow's host socket meets the kernel's
	// addresses (hostsock.go); nil, as in production, uses them as they are.
	host hostSeam
	// udpIdle, dnsIdle, pingIdle override the flow idle timeouts.
	udpIdle, dnsIdle, pingIdle time.Duration
	// evictIdle overrides how long a UDP or ping flow must have been
	// quiet before a new flow at the limit may evict it.
	evictIdle time.Duration
	// raInterval overrides the period of unsolicited router advertisements.
	raInterval time.Duration
}

// Defaults. The DNS and ping timeouts follow tailscale's forwarder (and are
// in the range of conntrack's); other UDP flows live as long as libslirp's
// (Limits.UDPIdle).
const (
	defaultMTU         = 1500
	defaultDialTimeout = 30 * time.Second
	defaultAckDelay    = time.Millisecond
	defaultDNSIdle     = 15 * time.Second
	defaultPingIdle    = 30 * time.Second
	// defaultRAInterval is within RFC 4861's MaxRtrAdvInterval default
	// (600 s) and libslirp's 200–600 s; the router lifetime we advertise
	// (raRouterLifetime) is three times the maximum.
	defaultRAInterval = 200 * time.Second

	// gVisor's forwarder holds a handler goroutine per SYN until Complete
	// and drops SYNs beyond its cap silently, so its cap lies above
	// Limits.TCPMaxHalfOpen, where tcplimit.go refuses or evicts first with
	// a RST: the room above covers handlers on their way to that decision
	// and evicted attempts being reset. Only a flood faster than the stack
	// can reset reaches it; then it bounds the goroutines (and memory)
	// that the flood holds, and the guest retransmits.
	tcpForwarderCapFactor = 2

	nicID tcpip.NICID = 1
)

// Stack is one running virtual network. Create it with New, serve it with
// Run; Close releases it if Run never ran.
type Stack struct {
	cfg  Config
	logf func(format string, args ...any)

	gv   *gvstack.Stack
	link *filterLink
	tap  *os.File // nil with a test link
	mac  tcpip.LinkAddress

	// ctx is alive from New until teardown begins (Run's ctx ends, the
	// tap fails, or Close); every flow derives from it. cancel records why.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// udpFast holds the UDP flows whose datagrams the link filter writes
	// to the host itself (udpfast.go).
	udpFast udpFastTable

	// refused counts what the stack refused, by reason (limits.go).
	refused    refusals
	refusalLog refusalLogs

	// live are the flows alive now (flows.go); hostErrors counts the new
	// flows whose host socket failed.
	live       flowSet
	hostErrors atomic.Uint64
	// counters reads the tap's frame counts, setCapture replaces its
	// capture; nil with a test link.
	counters   func() link.Counters
	setCapture func(link.Capture)
	// tapLink is the tap's link endpoint, for frames made outside gVisor
	// (the UDP reply fast path); nil with a test link that is not one.
	tapLink *link.Tap

	// tcp bounds the guest's TCP connections (tcplimit.go).
	tcp *tcpTable

	// syns notes the guests' SYNs for tcpunreach.go.
	syns synTable

	// udp is the guest's UDP ports and flows (udp.go, udplimits.go).
	udp udpTable

	// flows tracks every goroutine the Stack starts or gVisor starts on
	// its behalf; teardown refuses new ones and waits for the rest.
	flows tracker

	// poller waits for the host sockets of idle TCP flows (relay.Poller):
	// Run runs it as a member of flows; shutdown closes it after them.
	poller *relay.Poller
	// direct is the direct TCP path (Config.DirectTCP), nil when off. Its
	// goroutine starts in Run; without a link.Tap it takes nothing.
	direct *directPath

	// dnsConns are bound in New and handed to ServeDNS by Run.
	dnsConns []dnsConn

	// dhcp and dhcpConns (bound in New, served by Run) are nil with
	// DisableDHCP.
	dhcp      *dhcp.Server
	dhcpConns []*gonet.UDPConn

	// dhcp6 answers DHCPv6 from the link filter; nil without
	// Config.DHCPv6.
	dhcp6 *dhcp6.Server

	// ctl queues packets the link filter wants sent (ICMP errors), so that
	// they are written from the control goroutine and never re-enter the
	// stack from inside the inbound path. raKick asks for an RA now.
	ctl    chan outPacket
	raKick chan struct{}

	ping pingTable

	// sources4 and sources6 are the prefixes the guest may send from
	// (source.go).
	sources4, sources6 []netip.Prefix

	// senders are the foreign senders learnSender made neighbours of.
	senders  sync.Map // netip.Addr → tcpip.LinkAddress
	sendersN atomic.Int64

	// solicited are the solicited-node groups joined for a mirrored
	// network's neighbours (joinSolicited).
	solicitedMu sync.Mutex
	solicited   map[netip.Addr]struct{} // guarded by solicitedMu

	started  atomic.Bool
	teardown sync.Once
	done     chan struct{} // closed when teardown has finished
}

type dnsConn struct {
	pc *gonet.UDPConn
	ln *gonet.TCPListener
}

// errStopped is the cause recorded when Close ends the Stack.
var errStopped = errors.New("stack closed")

// New validates cfg and builds the stack on the tap fd. It binds the DNS and
// DHCP endpoints but starts no goroutine (gVisor's protocol workers aside):
// packets are read from the tap only once Run starts. If New fails, the
// caller still owns cfg.Tap.
func New(cfg Config) (*Stack, error) {
	if cfg.Tap == nil {
		return nil, errors.New("stack: Config.Tap is nil")
	}
	if err := cfg.Plan.Validate(); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = defaultMTU
	}
	mac := macFor(cfg.Plan.Gateway4)
	// s is set before Run attaches the link, the only way onError can be
	// called.
	var s *Stack
	tapFile, err := link.Pollable(cfg.Tap)
	if err != nil {
		return nil, err
	}
	raw, err := link.New(tapFile, mtu, mac, cfg.VnetHdr, func(err error) {
		// The namespace, and with it the tap, is gone.
		s.cancel(fmt.Errorf("stack: reading the tap: %w", err))
	})
	if err != nil {
		tapFile.Close()
		return nil, err
	}
	raw.SetCapture(cfg.Capture)
	s, err = newStack(cfg, ethernet.New(raw))
	if err != nil {
		tapFile.Close()
		return nil, err
	}
	cfg.Tap.Close() // tapFile is our own dup of it
	s.tap = tapFile
	s.counters, s.setCapture, s.tapLink = raw.Counters, raw.SetCapture, raw
	return s, nil
}

// newStack builds a Stack on an arbitrary link endpoint that carries
// Ethernet frames (tests pass ethernet.New(pipe end)). cfg.Tap is ignored;
// the caller owns whatever is behind link.
func newStack(cfg Config, link gvstack.LinkEndpoint) (*Stack, error) {
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.AckDelay == 0 {
		cfg.AckDelay = defaultAckDelay
	}
	cfg.Limits = cfg.Limits.withUDPDefaults()
	if cfg.udpIdle <= 0 {
		cfg.udpIdle = cfg.Limits.UDPIdle
	}
	if cfg.dnsIdle <= 0 {
		cfg.dnsIdle = defaultDNSIdle
	}
	if cfg.evictIdle <= 0 {
		cfg.evictIdle = defaultEvictIdle
	}
	if cfg.pingIdle <= 0 {
		cfg.pingIdle = defaultPingIdle
	}
	if cfg.raInterval <= 0 {
		cfg.raInterval = defaultRAInterval
	}
	if err := cfg.Plan.Validate(); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	if cfg.OutboundAddr.IsValid() && !cfg.OutboundAddr.Unmap().Is4() {
		return nil, fmt.Errorf("stack: OutboundAddr %v is not IPv4", cfg.OutboundAddr)
	}
	if cfg.OutboundAddr6.IsValid() && !cfg.OutboundAddr6.Is6() {
		return nil, fmt.Errorf("stack: OutboundAddr6 %v is not IPv6", cfg.OutboundAddr6)
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}

	s := &Stack{
		cfg:    cfg,
		logf:   logf,
		ctl:    make(chan outPacket, 64),
		raKick: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.ping.flows = make(map[pingKey]*pingFlow)
	s.tcp = newTCPTable(cfg.Limits, &s.refused)
	s.ping.epoch = time.Now()
	s.udp.init(cfg.Limits, cfg.evictIdle)
	s.sources4, s.sources6 = sourcePrefixes(&s.cfg)

	if err := s.build(link); err != nil {
		s.cancel(err)
		if s.gv != nil {
			s.gv.Destroy()
		}
		return nil, err
	}
	var err error
	if cfg.DirectTCP {
		if s.direct, err = newDirectPath(s); err != nil {
			logf("stack: %v; TCP goes through gVisor", err)
		}
	}
	if s.poller, err = relay.NewPoller(); err != nil {
		// Idle flows then keep a goroutine each, as before.
		logf("stack: %v", err)
		s.poller = nil
	}
	return s, nil
}

// build assembles the gVisor stack. On error the caller destroys s.gv.
func (s *Stack) build(link gvstack.LinkEndpoint) error {
	plan := &s.cfg.Plan
	netProtos := []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol}
	if plan.IPv6() {
		// The zero Options are what a router wants: no DAD on our own
		// addresses (they are ours by definition, and DAD would delay
		// them), no RA handling, no SLAAC, no router solicitations.
		netProtos = append(netProtos, ipv6.NewProtocolWithOptions(ipv6.Options{}))
	}
	s.gv = gvstack.New(gvstack.Options{
		NetworkProtocols:   netProtos,
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})

	// SACK: recovers from multiple losses per window; gVisor defaults it
	// off. tailscale and gvisor-tap-vsock enable it; measured better than
	// off (docs/performance.md).
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.gv.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("stack: enable TCP SACK: %v", err)
	}
	// Receive buffer moderation (auto-tuning) lets the window grow with
	// the bandwidth-delay product of each flow; measured better than off
	// (docs/performance.md).
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := s.gv.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fmt.Errorf("stack: enable TCP receive buffer moderation: %v", err)
	}

	// TIME_WAIT of 1 s instead of 60 s. When the host side closes first,
	// our endpoint is the active closer and sits in TIME_WAIT; gVisor
	// hands a new SYN for that 4-tuple only to a listening endpoint, never
	// to the forwarder, so the guest's next connection that reuses the
	// port (a guest picking random ports collides after a few hundred
	// connections) would stall until TIME_WAIT ends. TIME_WAIT guards
	// against old duplicates delayed in a network; the tap has no
	// network in it.
	tw := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	if err := s.gv.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fmt.Errorf("stack: TCP TIME_WAIT timeout: %v", err)
	}

	// Delayed ACKs (carried gVisor patch 0003): the ACK of a small
	// request from the guest waits up to ackDelay for the answer to carry
	// it, saving the guest a segment per request and us a tap write.
	if s.cfg.AckDelay > 0 {
		ad := tcpip.TCPDelayedAckOption(s.cfg.AckDelay)
		if err := s.gv.SetTransportProtocolOption(tcp.ProtocolNumber, &ad); err != nil {
			return fmt.Errorf("stack: TCP delayed ACK: %v", err)
		}
	}

	s.link = newFilterLink(s, link)
	s.mac = link.LinkAddress()
	if err := s.gv.CreateNICWithOptions(nicID, s.link, gvstack.NICOptions{Name: "tap"}); err != nil {
		return fmt.Errorf("stack: create NIC: %v", err)
	}
	// Promiscuous: accept packets for any destination address, so the
	// forwarders see flows to the whole internet. Spoofing: let endpoints
	// bind to, and send from, any address (the original destinations).
	// Both are what makes a transparent proxy; the link filter undoes their
	// side effects (filter.go).
	if err := s.gv.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("stack: promiscuous mode: %v", err)
	}
	if err := s.gv.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("stack: spoofing: %v", err)
	}

	addrs := []netip.Prefix{
		netip.PrefixFrom(plan.Gateway4, plan.Net4.Bits()),
		netip.PrefixFrom(plan.DNS4, plan.Net4.Bits()),
	}
	// Everything is on-link: the only neighbor is the namespace.
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	if plan.IPv6() {
		addrs = append(addrs,
			netip.PrefixFrom(plan.Gateway6, plan.Net6.Bits()),
			netip.PrefixFrom(plan.DNS6, plan.Net6.Bits()),
			netip.PrefixFrom(plan.Router6, plan.Net6.Bits()))
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	added := map[netip.Addr]bool{}
	for _, p := range addrs {
		// A plan may leave an address out (no DNS address), or give two
		// jobs one address (a mirrored link-local gateway is the router).
		if !p.Addr().IsValid() || added[p.Addr()] {
			continue
		}
		added[p.Addr()] = true
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(p.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(p.Addr()), PrefixLen: p.Bits()},
		}
		if err := s.gv.AddProtocolAddress(nicID, pa, gvstack.AddressProperties{}); err != nil {
			return fmt.Errorf("stack: add address %v: %v", p, err)
		}
	}
	s.gv.SetRouteTable(routes)

	tcpFwd := tcp.NewForwarder(s.gv, 0, tcpForwarderCapFactor*s.tcp.lim.TCPMaxHalfOpen, s.handleTCP)
	s.gv.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s.gv, s.handleUDP)
	s.gv.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)

	if !s.cfg.DisableDHCP {
		if err := s.bindDHCP(); err != nil {
			return err
		}
	}

	if s.cfg.DHCPv6 {
		if err := s.newDHCP6(); err != nil {
			return err
		}
	}

	if s.cfg.ServeDNS != nil {
		for _, a := range []netip.Addr{plan.DNS4, plan.DNS6} {
			if !a.IsValid() {
				continue
			}
			full := tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(a), Port: 53}
			pc, err := gonet.DialUDP(s.gv, &full, nil, protoOf(a))
			if err != nil {
				return fmt.Errorf("stack: bind DNS %v udp: %w", netip.AddrPortFrom(a, 53), err)
			}
			ln, err := gonet.ListenTCP(s.gv, full, protoOf(a))
			if err != nil {
				pc.Close()
				return fmt.Errorf("stack: bind DNS %v tcp: %w", netip.AddrPortFrom(a, 53), err)
			}
			s.dnsConns = append(s.dnsConns, dnsConn{pc: pc, ln: ln})
		}
	}
	return nil
}

// Run serves the virtual network until ctx ends (or the tap fails), then
// tears everything down: it closes every flow, stops reading the tap,
// destroys the gVisor stack and closes the tap. It returns only after every
// goroutine started for the Stack has exited. The error is nil when ctx
// ends (whatever its cause) or Close is called, and non-nil when reading
// the tap failed. Run may be called once.
func (s *Stack) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("stack: Run called twice, or after Close")
	}
	// The end of ctx, whatever its cause, is a clean stop (nil cause =
	// context.Canceled); only the tap failing makes Run return an error.
	stop := context.AfterFunc(ctx, func() { s.cancel(nil) })
	defer stop()

	if s.direct != nil && !s.flows.goFunc(s.direct.run) {
		s.direct.ep.Close()
	}
	s.link.start()
	s.flows.goFunc(s.controlLoop)
	if s.poller != nil {
		s.flows.goFunc(func() {
			if err := s.poller.Run(s.ctx); err != nil {
				s.logf("stack: %v", err)
			}
		})
	}
	for _, d := range s.dnsConns {
		s.flows.goFunc(func() {
			// Closing the conns is what unblocks a ServeDNS that is
			// slow to notice ctx; it also makes ownership simple.
			stop := context.AfterFunc(s.ctx, func() { d.pc.Close(); d.ln.Close() })
			defer stop()
			err := s.cfg.ServeDNS(s.ctx, d.pc, d.ln)
			if err != nil && s.ctx.Err() == nil {
				s.logf("stack: DNS on %v: %v", d.pc.LocalAddr(), err)
			}
			d.pc.Close()
			d.ln.Close()
		})
	}

	for _, pc := range s.dhcpConns {
		s.flows.goFunc(func() { s.serveDHCP(pc) })
	}

	<-s.ctx.Done()
	s.shutdown()
	if err := context.Cause(s.ctx); !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, errStopped) {
		return err
	}
	return nil
}

// Close stops the Stack. If Run never ran, Close releases what New
// acquired (including the tap); if Run is running, Close makes it return
// and waits for its teardown. Close is idempotent.
func (s *Stack) Close() error {
	s.cancel(errStopped)
	if s.started.CompareAndSwap(false, true) {
		s.shutdown()
	}
	<-s.done
	return nil
}

// shutdown tears down in dependency order. s.ctx must be done.
func (s *Stack) shutdown() {
	s.teardown.Do(func() {
		defer close(s.done)
		// 1. Every flow watches s.ctx (context.AfterFunc closes its
		//    conns); refuse new ones and wait for all of them. The link
		//    keeps running meanwhile, so aborting flows can still send
		//    their RSTs and handshakes in progress can finish.
		s.flows.closeAndWait()
		if s.direct != nil && !s.direct.running.Load() {
			s.direct.ep.Close() // Run never ran
		}
		if s.poller != nil {
			s.poller.Close()
		}
		// 2. Stop reading the tap, without holding any stack lock: the
		//    dispatch goroutine may be inside the stack (gvisor#11456).
		s.link.stop()
		// 3. Abort what is left in gVisor (DNS conns the ServeDNS
		//    handed out, endpoints in TIME_WAIT) and wait for its workers.
		s.gv.Destroy()
		// 4. link.Tap does not own the fd.
		if s.tap != nil {
			s.tap.Close()
		}
	})
}

// macFor returns the stack's MAC: 52:55 followed by the gateway's IPv4
// address, the shape libslirp uses for its virtual hosts.
func macFor(gw4 netip.Addr) tcpip.LinkAddress {
	gw := gw4.As4()
	return tcpip.LinkAddress([]byte{0x52, 0x55, gw[0], gw[1], gw[2], gw[3]})
}

// SetCapture makes c see every frame of the tap from now on (nil: none),
// beside or instead of Config.Capture, at any time.
func (s *Stack) SetCapture(c link.Capture) {
	if s.setCapture != nil {
		s.setCapture(c)
	}
}
