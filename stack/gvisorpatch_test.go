package stack

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"gvisor.dev/gvisor/pkg/log"
	"gvisor.dev/gvisor/pkg/state"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Patch 0002 (a SYN for a 4-tuple in TIME_WAIT goes to the forwarder) adds
// this method; without the patch the package does not build. Its
// behaviour: TestTCPTimeWaitReuse.
var _ = (*gvstack.Stack).HandleWithTransportProtocolHandler

// TestGVisorZeroWindowPatch fails when usernet is built against an unpatched gVisor (the
// replace in go.mod dropped, or third_party/gvisor regenerated without
// third_party/gvisor-patches/0001-*): with the receive window closed, a segment that starts
// at RCV.NXT must be acceptable so that its ACK is acted on (Linux's tcp_sequence). Without
// it a TCP connection saturated both ways can stall for good (docs/design.md, "Carried gVisor
// patches"; integration test TestTCPLargeTransfer/mtu1500-no-offload).
func TestGVisorZeroWindowPatch(t *testing.T) {
	const nxt = seqnum.Value(100000)
	for _, tc := range []struct {
		name   string
		seq    seqnum.Value
		len    seqnum.Size
		rcvAcc seqnum.Value
		want   bool
	}{
		{"closed window, data at RCV.NXT", nxt, 1448, nxt, true},
		{"closed window, pure ACK at RCV.NXT", nxt, 0, nxt, true},
		{"closed window, data after RCV.NXT", nxt + 1, 1448, nxt, false},
		{"closed window, old data", nxt - 1448, 1448, nxt, false},
		{"open window, data at RCV.NXT", nxt, 1448, nxt + 65535, true},
		{"open window, data past the window", nxt + 65536, 1448, nxt + 65535, false},
	} {
		if got := header.Acceptable(tc.seq, tc.len, nxt, tc.rcvAcc); got != tc.want {
			t.Errorf("%s: header.Acceptable(seq %d, len %d, rcvNxt %d, rcvAcc %d) = %v, want %v",
				tc.name, tc.seq, tc.len, nxt, tc.rcvAcc, got, tc.want)
		}
	}
}

// TestGVisorNeighborCachePatch fails without third_party/gvisor-patches/0004-*: a NIC that
// resolves link addresses (ARP for IPv4, NDP for IPv6, as usernet's tap) made its neighbor
// caches' maps with room for 512 entries each, about 20 KiB apiece, at once.
func TestGVisorNeighborCachePatch(t *testing.T) {
	s := gvstack.New(gvstack.Options{NetworkProtocols: []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol}})
	defer s.Destroy()
	a, b := pipe.New("\x02\x00\x00\x00\x00\x01", "\x02\x00\x00\x00\x00\x02", 1500)
	defer b.Close()
	ep := ethernet.New(a)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := s.CreateNIC(1, ep); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 24<<10 {
		t.Errorf("CreateNIC allocated %d bytes; want the neighbor caches to start small (patch 0004)", got)
	} else {
		t.Logf("CreateNIC allocated %d bytes", got)
	}
}

var scoreboardSink *tcp.SACKScoreboard

// TestGVisorSACKScoreboardPatch fails without third_party/gvisor-patches/0005-*: every TCP
// endpoint's sender made its SACK scoreboard's btree, with a free list of 32 nodes, at the
// handshake, although most connections never see a SACK block: 336 bytes of each idle
// flow. Patched, the tree is made by the first Insert and dropped once emptied; and an
// endpoint's receiver's SACK blocks are made at the first out-of-order segment, which
// (with two bools moved into the struct's tail padding) puts the endpoint in the runtime's
// 1536-byte size class rather than 1792: at most 1528 bytes, as an object of more than 512
// bytes with pointers has an 8-byte header.
func TestGVisorSACKScoreboardPatch(t *testing.T) {
	if n := unsafe.Sizeof(tcp.Endpoint{}); n > 1528 {
		t.Errorf("tcp.Endpoint is %d bytes, want at most 1528 (the 1536-byte size class with the runtime's header; patch 0005)", n)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n := testing.AllocsPerRun(100, func() { scoreboardSink = tcp.NewSACKScoreboard(1460, 1000) })
	runtime.ReadMemStats(&after)
	if n > 1 {
		t.Errorf("NewSACKScoreboard made %v allocations, want 1 (the tree made at the first SACK block: patch 0005)", n)
	}
	t.Logf("a new scoreboard: %v allocations, %d bytes", n, (after.TotalAlloc-before.TotalAlloc)/101)
	s := tcp.NewSACKScoreboard(1460, 1000)
	if !s.Empty() || s.IsSACKED(header.SACKBlock{Start: 2000, End: 3000}) || s.IsLost(1000) {
		t.Fatalf("a new scoreboard is not empty: %v", s)
	}
	if blocks, _ := s.Copy(); len(blocks) != 0 {
		t.Fatalf("a new scoreboard's Copy: %v, want none", blocks)
	}
	s.Insert(header.SACKBlock{Start: 2000, End: 3000})
	s.Insert(header.SACKBlock{Start: 3000, End: 4000})
	s.Insert(header.SACKBlock{Start: 6000, End: 7000})
	if !s.IsSACKED(header.SACKBlock{Start: 2500, End: 3500}) || s.Sacked() != 3000 {
		t.Fatalf("after three SACK blocks: %v, %d bytes sacked; want 2000-4000 and 6000-7000", s, s.Sacked())
	}
	s.Delete(7000)
	if !s.Empty() || s.Sacked() != 0 {
		t.Fatalf("after deleting everything below 7000: %v, %d bytes sacked; want empty", s, s.Sacked())
	}
	s.Insert(header.SACKBlock{Start: 8000, End: 9000})
	if !s.IsSACKED(header.SACKBlock{Start: 8000, End: 9000}) {
		t.Fatalf("a SACK block after the scoreboard emptied is lost: %v", s)
	}
	s.Reset()
	if !s.Empty() || s.MaxSACKED() != 8999 {
		t.Fatalf("after Reset: %v, max SACKed %d; want empty, 8999", s, s.MaxSACKED())
	}
}

// TestGVisorSACKAfterLoss: with patch 0005's SACK state made when needed, a transfer to the
// guest that loses segments recovers through SACK (both stacks: the guest's receiver makes
// its SACK blocks, usernet's sender its scoreboard) and delivers every byte in order.
func TestGVisorSACKAfterLoss(t *testing.T) {
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		c.Write(data)
		c.Close()
	})
	e := startEnv(t, testConfig(t))
	sack := tcpip.TCPSACKEnabled(true)
	if err := e.guest.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		t.Fatalf("guest SACK: %v", err)
	}
	port := portOf(ln.Addr())
	var mu sync.Mutex
	seen := map[uint32]bool{}
	lost := 0
	e.sniff.drop(func(p []byte) bool {
		if len(p) < header.IPv4MinimumSize || header.IPVersion(p) != header.IPv4Version {
			return false
		}
		ip := header.IPv4(p)
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			return false
		}
		seg := header.TCP(ip.Payload())
		if seg.SourcePort() != port || len(seg.Payload()) == 0 {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[seg.SequenceNumber()] {
			return false // a retransmission
		}
		seen[seg.SequenceNumber()] = true
		if len(seen)%40 == 5 {
			lost++
			return true
		}
		return false
	})
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw4, port))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("guest read %d of %d bytes (%v), or not the same bytes", len(got), len(data), err)
	}
	mu.Lock()
	defer mu.Unlock()
	recoveries := e.s.gv.Stats().TCP.SACKRecovery.Value()
	t.Logf("%d segments lost; usernet's sender entered SACK recovery %d times", lost, recoveries)
	if lost == 0 || recoveries == 0 {
		t.Errorf("%d segments lost, %d SACK recoveries: want both above 0", lost, recoveries)
	}
}

// stateName is a type gVisor's state package would record, under the name names[n].
type stateName int

var stateNames []string

func (n *stateName) StateTypeName() string { return stateNames[*n] }
func (*stateName) StateFields() []string   { return nil }

// TestGVisorStateRegisterPatch fails without third_party/gvisor-patches/0006-*: every
// registered type went into maps that only saving and restoring a stack read, private
// memory of every process.
func TestGVisorStateRegisterPatch(t *testing.T) {
	const n = 1000
	types := make([]stateName, n)
	for i := range types {
		types[i] = stateName(i)
		stateNames = append(stateNames, "usernet.test/stateName"+strconv.Itoa(i))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range types {
		state.Register(&types[i])
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<10 {
		t.Errorf("registering %d types allocated %d bytes; want none kept (patch 0006)", n, got)
	} else {
		t.Logf("registering %d types allocated %d bytes", n, got)
	}
}

// TestGVisorIPv4IDPatch fails without third_party/gvisor-patches/0007-*: the IPv4
// protocol's identifier buckets (8 KiB) were filled through two temporary slices of their
// size, garbage that an idle process keeps.
func TestGVisorIPv4IDPatch(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f := ipv4.NewProtocolWithOptions(ipv4.Options{})
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(f)
	if got := after.TotalAlloc - before.TotalAlloc; got > 12<<10 {
		t.Errorf("ipv4.NewProtocolWithOptions allocated %d bytes; want the buckets only (patch 0007)", got)
	} else {
		t.Logf("ipv4.NewProtocolWithOptions allocated %d bytes", got)
	}
}

//go:noinline
func localStackVia(k int) []byte { return log.LocalStack(k) }

// TestGVisorLogLocalStack: patch 0011 replaced the regexp with which gVisor's
// log.LocalStack drops its top frames (compiled by the package initializer in every
// process) with a scan of the lines; it must drop the same frames. Patch 0011's other
// half, regexp not linked into usernet, is internal/deptest's TestStartupDeps.
func TestGVisorLogLocalStack(t *testing.T) {
	// The frames of the trace, top first: log.Stacks, log.LocalStack, localStackVia,
	// this test, testing.tRunner, runtime.goexit.
	all := []string{"log.Stacks(", "log.LocalStack(", "stack.localStackVia(", "stack.TestGVisorLogLocalStack(", "testing.tRunner("}
	for k := 0; k < 3; k++ {
		trace := string(localStackVia(k))
		lines := strings.Split(trace, "\n")
		if !strings.HasPrefix(lines[0], "goroutine ") {
			t.Fatalf("LocalStack(%d) starts with %q, want the goroutine's header", k, lines[0])
		}
		var funcs []string
		for _, l := range lines[1:] {
			if l != "" && !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "created by ") {
				funcs = append(funcs, l)
			}
		}
		want := all[k+1:]
		if len(funcs) < len(want) {
			t.Fatalf("LocalStack(%d):\n%s\nwant the frames %q first", k, trace, want)
		}
		for i, w := range want {
			if !strings.Contains(funcs[i], w) {
				t.Fatalf("LocalStack(%d):\n%s\nframe %d is %q, want %s...", k, trace, i, funcs[i], w)
			}
		}
		// Each kept frame keeps its file line.
		if n := strings.Count(trace, "\n\t"); n < len(funcs) {
			t.Errorf("LocalStack(%d): %d file lines for %d frames:\n%s", k, n, len(funcs), trace)
		}
	}
}

// TestGVisorTimerHandlerPatch fails without third_party/gvisor-patches/0009-*: every TCP
// endpoint gave each of its five timers a closure (and a method value) at the handshake,
// although an idle connection arms one of them. Patched, a timer holds its endpoint and
// a handler that is a function of it, and makes the clock's closure when first armed:
// no field of the timer is a closure.
func TestGVisorTimerHandlerPatch(t *testing.T) {
	ka, ok := reflect.TypeFor[tcp.Endpoint]().FieldByName("keepalive")
	if !ok {
		t.Fatal("tcp.Endpoint has no keepalive field")
	}
	tf, ok := ka.Type.FieldByName("timer")
	if !ok {
		t.Fatal("the endpoint's keepalive has no timer field")
	}
	timer := tf.Type
	h, ok := timer.FieldByName("handler")
	want := reflect.TypeFor[func(*tcp.Endpoint) tcpip.Error]()
	if !ok || h.Type != want {
		t.Errorf("the TCP timer has no handler field of type %v (patch 0009)", want)
	}
	for i := range timer.NumField() {
		if f := timer.Field(i); f.Type == reflect.TypeFor[func()]() {
			t.Errorf("the TCP timer holds a closure, %s (patch 0009)", f.Name)
		}
	}
}

// TestGVisorDelayedAckQueuePatch fails without third_party/gvisor-patches/0010-*: each
// endpoint's delayed ACK (patch 0003) had a clock timer of its own, and each firing started
// a goroutine: a thousand connections whose FINs came at once made a thousand goroutines at
// once, whose descriptors the runtime keeps. Patched, a stack's delayed ACKs wait in one
// queue behind one timer. Here n connections each get a byte that nobody answers: every
// ACK is delayed, and the stack starts its clock's timer once, not n times.
func TestGVisorDelayedAckQueuePatch(t *testing.T) {
	const n = 100
	clock := &countingClock{Clock: tcpip.NewStdClock()}
	srv := gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol},
		Clock:              clock,
	})
	defer srv.Destroy()
	delay := tcpip.TCPDelayedAckOption(20 * time.Millisecond)
	if err := srv.SetTransportProtocolOption(tcp.ProtocolNumber, &delay); err != nil {
		t.Fatalf("delayed ACK option: %v", err)
	}
	guestLink, srvLink := pipe.New(guestMAC, stackMAC, 1500)
	if err := srv.CreateNIC(1, ethernet.New(srvLink)); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(gw4), PrefixLen: 24}}
	if err := srv.AddProtocolAddress(1, pa, gvstack.AddressProperties{}); err != nil {
		t.Fatalf("AddProtocolAddress: %v", err)
	}
	srv.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	guest, _, _ := newGuest(t, ethernet.New(guestLink), false)
	defer guest.Destroy()

	ln, err := gonet.ListenTCP(srv, tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(gw4), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	got := make(chan net.Conn, n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Read(make([]byte, 1)) // and never answers
			got <- c
		}
	}()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := guestDial(t, guest, netip.AddrPortFrom(gw4, 80))
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns[i] = c
	}
	sent := srv.Stats().TCP.SegmentsSent.Value()
	before := clock.afterFuncs.Load()
	for i, c := range conns {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for range n {
		defer (<-got).Close()
	}
	// Every byte's ACK, delayed.
	for deadline := time.Now().Add(10 * time.Second); srv.Stats().TCP.SegmentsSent.Value()-sent < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d segments sent for %d bytes nobody answered, want an ACK each", srv.Stats().TCP.SegmentsSent.Value()-sent, n)
		}
		time.Sleep(time.Millisecond)
	}
	if timers := clock.afterFuncs.Load() - before; timers >= n/2 {
		t.Errorf("%d delayed ACKs started %d clock timers, want one for all (patch 0010)", n, timers)
	} else {
		t.Logf("%d delayed ACKs started %d clock timers", n, timers)
	}
}

// countingClock counts the timers started through it.
type countingClock struct {
	tcpip.Clock
	afterFuncs atomic.Int64
}

func (c *countingClock) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	c.afterFuncs.Add(1)
	return c.Clock.AfterFunc(d, f)
}
