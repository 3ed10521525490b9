package autofwd

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/usernet/usernet/portfwd"
)

const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 6402000A:D2F0 0202000A:0050 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`

func TestParseProcNet(t *testing.T) {
	if got, want := ParseProcNet([]byte(procTCP), stateListen), []uint16{80, 8080}; !slices.Equal(got, want) {
		t.Errorf("listening TCP ports = %v, want %v (the established one left out, duplicates merged)", got, want)
	}
	if got := ParseProcNet([]byte(procTCP), stateClose); len(got) != 0 {
		t.Errorf("ports in state 07 = %v, want none", got)
	}
	if got := ParseProcNet([]byte("garbage\n 0: zz:zz 0 0A\n"), stateListen); len(got) != 0 {
		t.Errorf("ports of garbage = %v, want none", got)
	}
}

// fakeForwarder records forwards, failing host port 1 as a privileged port
// would.
type fakeForwarder struct {
	mu     sync.Mutex
	next   int
	active map[int]portfwd.Rule
}

func (f *fakeForwarder) Add(_ context.Context, r portfwd.Rule) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.HostPort == 1 {
		return 0, fmt.Errorf("bind %d: permission denied", r.HostPort)
	}
	f.next++
	f.active[f.next] = r
	return f.next, nil
}

func (f *fakeForwarder) Remove(id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.active, id)
	return nil
}

func (f *fakeForwarder) rules() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.active {
		out = append(out, r.String())
	}
	slices.Sort(out)
	return out
}

// file is a /proc/net file whose contents the test changes.
type file struct {
	mu   sync.Mutex
	text []byte
}

func (f *file) set(s string) { f.mu.Lock(); f.text = []byte(s); f.mu.Unlock() }

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.NewReader(f.text).ReadAt(p, off)
}

func line(port uint16, state int) string {
	return fmt.Sprintf("   0: 00000000:%04X 00000000:0000 %02X 00000000:00000000 00:00000000 00000000 0 0 1\n", port, state)
}

const header = "  sl  local_address rem_address   st\n"

func TestRunFollowsListeners(t *testing.T) {
	tcp, udp := &file{}, &file{}
	tcp.set(header + line(8080, stateListen) + line(1, stateListen))
	udp.set(header + line(5353, stateClose))
	fw := &fakeForwarder{active: map[int]portfwd.Rule{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			TCP: true, UDP: true, TCP4: tcp, UDP4: udp,
			Hosts:     []netip.Addr{netip.IPv4Unspecified()},
			Skip:      func(proto string, port uint16) bool { return proto == "udp" && port == 8080 },
			Interval:  10 * time.Millisecond,
			Forwarder: fw,
		})
	}()
	waitRules := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !slices.Equal(fw.rules(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("forwards = %q, want %q", fw.rules(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// UDP takes TCP's ports too (but 8080/udp is skipped); port 1 fails.
	waitRules("tcp 0.0.0.0:8080 -> *:8080", "udp 0.0.0.0:5353 -> *:5353")
	tcp.set(header + line(9090, stateListen))
	waitRules("tcp 0.0.0.0:9090 -> *:9090", "udp 0.0.0.0:5353 -> *:5353", "udp 0.0.0.0:9090 -> *:9090")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := fw.rules(); len(got) != 0 {
		t.Errorf("forwards left after Run returned: %q", got)
	}
}
