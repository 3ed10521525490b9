package stack

// Test harness: the namespace is a second gVisor stack ("guest") joined to
// ours by pipe.New + ethernet.New; the host side is real
// sockets on 127.0.0.1 / ::1 only. Destinations outside the virtual
// network go through Config.dial, which maps them to loopback servers.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/internal/testutil"
	"github.com/usernet/usernet/netplan"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const (
	guestMAC = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x64")
	stackMAC = tcpip.LinkAddress("\x52\x55\x0a\x00\x02\x02")
)

var (
	gw4    = netip.MustParseAddr("10.0.2.2")
	dns4   = netip.MustParseAddr("10.0.2.3")
	guest4 = netip.MustParseAddr("10.0.2.100")
	gw6    = netip.MustParseAddr("fd00::2")
	dns6   = netip.MustParseAddr("fd00::3")
	// outside is a documentation address (RFC 5737): the tests never
	// reach it, Config.dial maps it to a loopback server.
	outside = netip.MustParseAddr("192.0.2.1")
)

// env is one stack under test with its guest.
type env struct {
	s      *Stack
	guest  *gvstack.Stack
	sniff  *sniffer // frames delivered to the guest
	ndp    *guestNDP
	runErr chan error
	cancel context.CancelFunc
}

// testConfig returns the slirp4netns defaults with logs to t.
func testConfig(t testing.TB) Config {
	return Config{
		Plan: testPlan(t, false),
		Logf: quietLogf(t),
	}
}

// testPlan is slirp4netns's plan for 10.0.2.0/24, with fd00::/64 if v6.
func testPlan(t testing.TB, v6 bool) netplan.Plan {
	return slirpPlan(t, "10.0.2.0/24", v6)
}

func slirpPlan(t testing.TB, cidr string, v6 bool) netplan.Plan {
	t.Helper()
	p, err := netplan.Slirp(netip.MustParsePrefix(cidr), v6)
	if err != nil {
		t.Fatalf("netplan.Slirp(%s, %v): %v", cidr, v6, err)
	}
	return p
}

// quietLogf logs through t until the test ends.
var quietLogf = testutil.QuietLogf

// startEnv builds the stack with cfg on a pipe, starts Run, and builds the
// guest. Cleanup cancels Run, checks it returned nil, and destroys the
// guest.
func startEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	guestLink, stackLink := pipe.New(guestMAC, stackMAC, 1500)
	s, err := newStack(cfg, ethernet.New(stackLink))
	if err != nil {
		t.Fatalf("newStack(%+v): %v", cfg, err)
	}
	e := &env{s: s, runErr: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.runErr <- s.Run(ctx) }()
	e.guest, e.sniff, e.ndp = newGuest(t, ethernet.New(guestLink), cfg.Plan.IPv6())
	t.Cleanup(func() {
		e.stop(t)
		e.guest.Destroy()
	})
	return e
}

// stop cancels Run and waits for it.
func (e *env) stop(t testing.TB) {
	t.Helper()
	e.cancel()
	select {
	case err, ok := <-e.runErr:
		if ok && err != nil {
			t.Errorf("Run() = %v, want nil after cancel", err)
		}
		if ok {
			close(e.runErr)
		}
	case <-time.After(20 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("Run did not return within 20s of cancel; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
	}
}

// newGuest builds the namespace: 10.0.2.100/24 with a default route via
// 10.0.2.2, and with v6 SLAAC from router advertisements.
func newGuest(t testing.TB, link gvstack.LinkEndpoint, v6 bool) (*gvstack.Stack, *sniffer, *guestNDP) {
	t.Helper()
	netProtos := []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol}
	ndp := &guestNDP{}
	if v6 {
		netProtos = append(netProtos, ipv6.NewProtocolWithOptions(ipv6.Options{
			NDPConfigs: ipv6.NDPConfigurations{
				HandleRAs:              ipv6.HandlingRAsAlwaysEnabled,
				DiscoverDefaultRouters: true,
				DiscoverOnLinkPrefixes: true,
				AutoGenGlobalAddresses: true,
				// Solicit, as Linux does on link up: the stack's
				// first RA may go out before the guest exists.
				MaxRtrSolicitations:     3,
				RtrSolicitationInterval: 200 * time.Millisecond,
			},
			AutoGenLinkLocal: true,
			NDPDisp:          ndp,
			// DAD on, so that a stack answering neighbor
			// solicitations for everything would break SLAAC here.
			DADConfigs: gvstack.DADConfigurations{DupAddrDetectTransmits: 1, RetransmitTimer: 50 * time.Millisecond},
		}))
	}
	nud := gvstack.DefaultNUDConfigurations()
	nud.RetransmitTimer = 50 * time.Millisecond
	nud.LearnRetransmitTimer = false
	g := gvstack.New(gvstack.Options{
		NetworkProtocols:   netProtos,
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		NUDConfigs:         nud,
	})
	ndp.s = g
	sn := newSniffer(link)
	if err := g.CreateNIC(1, sn); err != nil {
		t.Fatalf("guest CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(guest4), PrefixLen: 24},
	}
	if err := g.AddProtocolAddress(1, pa, gvstack.AddressProperties{}); err != nil {
		t.Fatalf("guest AddProtocolAddress(%v): %v", pa, err)
	}
	// AddRoute, not SetRouteTable: routes learned from an RA may already be there.
	g.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, Gateway: tcpipAddr(gw4), NIC: 1})
	return g, sn, ndp
}

// guestNDP installs the routes that router advertisements teach the
// guest (gVisor leaves that to its integrator, as Linux's kernel does not)
// and records what else they said.
type guestNDP struct {
	s *gvstack.Stack

	mu    sync.Mutex
	rdnss []tcpip.Address // guarded by mu
	dad   map[tcpip.Address]gvstack.DADResult
}

var _ ipv6.NDPDispatcher = (*guestNDP)(nil)

func (n *guestNDP) OnDuplicateAddressDetectionResult(_ tcpip.NICID, a tcpip.Address, r gvstack.DADResult) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dad == nil {
		n.dad = make(map[tcpip.Address]gvstack.DADResult)
	}
	n.dad[a] = r
}
func (n *guestNDP) OnOffLinkRouteUpdated(nic tcpip.NICID, dst tcpip.Subnet, router tcpip.Address, _ header.NDPRoutePreference) {
	n.s.AddRoute(tcpip.Route{Destination: dst, Gateway: router, NIC: nic})
}
func (n *guestNDP) OnOffLinkRouteInvalidated(tcpip.NICID, tcpip.Subnet, tcpip.Address) {}
func (n *guestNDP) OnOnLinkPrefixDiscovered(nic tcpip.NICID, p tcpip.Subnet) {
	n.s.AddRoute(tcpip.Route{Destination: p, NIC: nic})
}
func (n *guestNDP) OnOnLinkPrefixInvalidated(tcpip.NICID, tcpip.Subnet) {}
func (n *guestNDP) OnAutoGenAddress(tcpip.NICID, tcpip.AddressWithPrefix) gvstack.AddressDispatcher {
	return nil
}
func (n *guestNDP) OnAutoGenAddressDeprecated(tcpip.NICID, tcpip.AddressWithPrefix)  {}
func (n *guestNDP) OnAutoGenAddressInvalidated(tcpip.NICID, tcpip.AddressWithPrefix) {}
func (n *guestNDP) OnRecursiveDNSServerOption(_ tcpip.NICID, addrs []tcpip.Address, _ time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rdnss = append(n.rdnss, addrs...)
}
func (n *guestNDP) OnDNSSearchListOption(tcpip.NICID, []string, time.Duration)           {}
func (n *guestNDP) OnDHCPv6Configuration(tcpip.NICID, ipv6.DHCPv6ConfigurationFromNDPRA) {}

// sniffer records the frames delivered to the guest.
type sniffer struct {
	nested.Endpoint
	mu   sync.Mutex
	pkts [][]byte            // network-layer packets, guarded by mu
	dsts []tcpip.LinkAddress // their Ethernet destinations, guarded by mu
	ch   chan struct{}
	lose func([]byte) bool // packets the guest never gets, guarded by mu
}

// drop makes the guest lose the packets lose matches (nil: none).
func (s *sniffer) drop(lose func([]byte) bool) {
	s.mu.Lock()
	s.lose = lose
	s.mu.Unlock()
}

func newSniffer(child gvstack.LinkEndpoint) *sniffer {
	s := &sniffer{ch: make(chan struct{}, 1)}
	s.Endpoint.Init(child, s)
	return s
}

func (s *sniffer) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	b := pkt.Data().AsRange().ToSlice()
	var dst tcpip.LinkAddress
	if h := pkt.LinkHeader().Slice(); len(h) >= header.EthernetMinimumSize {
		dst = header.Ethernet(h).DestinationAddress()
	}
	s.mu.Lock()
	s.pkts = append(s.pkts, b)
	s.dsts = append(s.dsts, dst)
	lose := s.lose != nil && s.lose(b)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
	if lose {
		return
	}
	s.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// waitFor waits until match returns true for a recorded packet.
func (s *sniffer) waitFor(t testing.TB, d time.Duration, what string, match func([]byte) bool) []byte {
	t.Helper()
	p, _ := s.waitForFrame(t, d, what, func(_ tcpip.LinkAddress, p []byte) bool { return match(p) })
	return p
}

// waitForFrame waits until match returns true for a recorded packet and
// its Ethernet destination.
func (s *sniffer) waitForFrame(t testing.TB, d time.Duration, what string, match func(tcpip.LinkAddress, []byte) bool) ([]byte, tcpip.LinkAddress) {
	t.Helper()
	deadline := time.After(d)
	seen := 0
	for {
		s.mu.Lock()
		pkts, dsts := s.pkts[seen:], s.dsts[seen:]
		seen = len(s.pkts)
		s.mu.Unlock()
		for i, p := range pkts {
			if match(dsts[i], p) {
				return p, dsts[i]
			}
		}
		select {
		case <-s.ch:
		case <-deadline:
			t.Fatalf("no %s reached the guest within %v", what, d)
			return nil, ""
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// any reports whether a recorded packet matches.
func (s *sniffer) any(match func([]byte) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pkts {
		if match(p) {
			return true
		}
	}
	return false
}

// redirect is the tests' hostSeam. It records every flow's host address
// ("network dst"), maps it through to (nil: keep it), refuses whatever is
// then not a loopback address (nothing may leave the machine), and maps
// the sources of replies back.
type redirect struct {
	to func(ctx context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error)

	mu    sync.Mutex
	calls []string
	back  map[netip.AddrPort]netip.AddrPort // loopback server → the address it stands for
}

func (d *redirect) toHost(ctx context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
	d.mu.Lock()
	d.calls = append(d.calls, network+" "+dst.String())
	d.mu.Unlock()
	to := dst
	if d.to != nil {
		var err error
		if to, err = d.to(ctx, network, dst); err != nil {
			return netip.AddrPort{}, err
		}
	}
	if !to.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("test seam: %v is not a loopback address: %w", to, syscall.ECONNREFUSED)
	}
	if to != dst {
		d.mu.Lock()
		if d.back == nil {
			d.back = map[netip.AddrPort]netip.AddrPort{}
		}
		d.back[to] = dst
		d.mu.Unlock()
	}
	return to, nil
}

func (d *redirect) fromHost(src netip.AddrPort) netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.back[src]; ok {
		return a
	}
	return src
}

func (d *redirect) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

// goroutineLeakCheck fails the test if goroutines started during it are
// still running at its end (wireguard-go device_test.go). Call it first,
// so that its cleanup runs last.
func goroutineLeakCheck(t *testing.T) {
	goroutines := func() (int, []byte) {
		p := pprof.Lookup("goroutine")
		b := new(bytes.Buffer)
		p.WriteTo(b, 1)
		return p.Count(), b.Bytes()
	}
	startGoroutines, startStacks := goroutines()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if runtime.NumGoroutine() <= startGoroutines {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		endGoroutines, endStacks := goroutines()
		t.Logf("starting stacks:\n%s\n", startStacks)
		t.Logf("ending stacks:\n%s\n", endStacks)
		t.Fatalf("expected %d goroutines, got %d, leak?", startGoroutines, endGoroutines)
	})
}

// listenTCP starts a loopback TCP server running serve for each conn.
func listenTCP(t testing.TB, network, addr string, serve func(net.Conn)) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("net.Listen(%q, %q): %v", network, addr, err)
	}
	serveListener(t, ln, serve)
	return ln.(*net.TCPListener)
}

// serveListener accepts on ln until cleanup closes it and runs serve on a
// goroutine of its own for each conn, closing the conn after; cleanup waits
// for all of them.
func serveListener(t testing.TB, ln net.Listener, serve func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
}

func echoServe(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

func portOf(a net.Addr) uint16 {
	switch a := a.(type) {
	case *net.TCPAddr:
		return uint16(a.Port)
	case *net.UDPAddr:
		return uint16(a.Port)
	}
	panic("portOf " + a.String())
}

// guestDial dials dst from the guest.
func guestDial(t testing.TB, g *gvstack.Stack, dst netip.AddrPort) (*gonet.TCPConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, g, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst.Addr()), Port: dst.Port()}, protoOf(dst.Addr()))
}

// guestUDP opens an unconnected UDP socket in the guest.
func guestUDP(t testing.TB, g *gvstack.Stack, v6 bool) *gonet.UDPConn {
	t.Helper()
	proto := ipv4.ProtocolNumber
	if v6 {
		proto = ipv6.ProtocolNumber
	}
	c, err := gonet.DialUDP(g, &tcpip.FullAddress{NIC: 1}, nil, proto)
	if err != nil {
		t.Fatalf("guest gonet.DialUDP: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// guestPing sends one ICMP echo request from the guest to dst and waits up
// to d for the reply; it returns the reply's ICMP message or nil.
func guestPing(t testing.TB, g *gvstack.Stack, dst netip.Addr, payload []byte, d time.Duration) []byte {
	t.Helper()
	var wq waiter.Queue
	tproto, nproto := icmp.ProtocolNumber4, ipv4.ProtocolNumber
	typ := byte(header.ICMPv4Echo)
	if dst.Is6() {
		tproto, nproto = icmp.ProtocolNumber6, ipv6.ProtocolNumber
		typ = byte(header.ICMPv6EchoRequest)
	}
	ep, err := g.NewEndpoint(tproto, nproto, &wq)
	if err != nil {
		t.Fatalf("guest NewEndpoint(icmp): %v", err)
	}
	defer ep.Close()
	we, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)

	msg := append([]byte{typ, 0, 0, 0, 0, 0, 0, 7}, payload...)
	var r bytes.Reader
	r.Reset(msg)
	if _, err := ep.Write(&r, tcpip.WriteOptions{To: &tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(dst)}}); err != nil {
		t.Fatalf("guest ping write to %v: %v", dst, err)
	}
	deadline := time.After(d)
	for {
		var buf bytes.Buffer
		_, err := ep.Read(&buf, tcpip.ReadOptions{})
		if err == nil {
			return buf.Bytes()
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			t.Fatalf("guest ping read: %v", err)
		}
		select {
		case <-ch:
		case <-deadline:
			return nil
		}
	}
}

// injectFrame writes a raw network-layer packet from the guest's link, as
// a (possibly broken) namespace would.
func injectFrame(t testing.TB, g *gvstack.Stack, proto tcpip.NetworkProtocolNumber, dstMAC tcpip.LinkAddress, pkt []byte) {
	t.Helper()
	frame := make([]byte, header.EthernetMinimumSize+len(pkt))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: guestMAC, DstAddr: dstMAC, Type: proto})
	copy(frame[header.EthernetMinimumSize:], pkt)
	if err := g.WriteRawPacket(1, proto, buffer.MakeWithData(frame)); err != nil {
		t.Fatalf("guest WriteRawPacket(%d bytes): %v", len(frame), err)
	}
}

// udpEchoServer starts a UDP echo server on the host's 127.0.0.1, stopped
// at cleanup.
func udpEchoServer(t testing.TB, v6 bool) net.PacketConn {
	t.Helper()
	network, addr := "udp4", "127.0.0.1:0"
	if v6 {
		network, addr = "udp6", "[::1]:0"
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
	return pc
}
