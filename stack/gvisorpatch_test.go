package stack

import (
	"runtime"
	"strconv"
	"testing"

	"gvisor.dev/gvisor/pkg/state"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
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

// stateName is a type gVisor's state package would record, under the name names[n].
type stateName int

var stateNames []string

func (n *stateName) StateTypeName() string { return stateNames[*n] }
func (*stateName) StateFields() []string   { return nil }

// TestGVisorStateRegisterPatch fails without third_party/gvisor-patches/0005-*: every
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
		t.Errorf("registering %d types allocated %d bytes; want none kept (patch 0005)", n, got)
	} else {
		t.Logf("registering %d types allocated %d bytes", n, got)
	}
}

// TestGVisorIPv4IDPatch fails without third_party/gvisor-patches/0006-*: the IPv4
// protocol's identifier buckets (8 KiB) were filled through two temporary slices of their
// size, garbage that an idle process keeps.
func TestGVisorIPv4IDPatch(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f := ipv4.NewProtocolWithOptions(ipv4.Options{})
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(f)
	if got := after.TotalAlloc - before.TotalAlloc; got > 12<<10 {
		t.Errorf("ipv4.NewProtocolWithOptions allocated %d bytes; want the buckets only (patch 0006)", got)
	} else {
		t.Logf("ipv4.NewProtocolWithOptions allocated %d bytes", got)
	}
}
