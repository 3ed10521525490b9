package integration

// TCP stress: connection churn, black-holed destinations, SYN floods and idle connections,
// from inside the namespace, with usernet as the unprivileged user. Each test prints its
// figures (go test -v); the short form runs by default, USERNET_STRESS=long runs the sizes
// of issue 12. Latency is asserted only against gross failures (a refused connection, one
// over 3 s), so that a loaded 2-core CI does not fail them; resources are asserted against
// the documented limits (docs/limits.md).

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stressLong says whether to run the long form.
func stressLong() bool { return os.Getenv("USERNET_STRESS") == "long" }

func stressSize(short, long int) int {
	if stressLong() {
		return long
	}
	return short
}

// blackHole is an address of the fake internet's range that nothing answers: the fake
// internet does not forward, and drops what is not its own without a word (netns.sh).
const blackHole = "203.0.113.1:80"

// procStats are a process's resident memory and file descriptors.
type procStats struct {
	rssKiB  int
	fds     int
	sockets int
}

func (s procStats) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d fds (%d sockets)", float64(s.rssKiB)/1024, s.fds, s.sockets)
}

func statsOf(t *testing.T, pid int) procStats {
	t.Helper()
	st, err := readStats(pid)
	if err != nil {
		t.Fatalf("usernet's stats: %v", err)
	}
	return st
}

func readStats(pid int) (procStats, error) {
	var s procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			s.rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return s, err
	}
	for _, e := range ents {
		s.fds++
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.HasPrefix(l, "socket:") {
			s.sockets++
		}
	}
	return s, nil
}

// sampler records the peak of a process's stats until stopped.
type sampler struct {
	stop chan struct{}
	done chan procStats
}

func sample(pid int) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan procStats, 1)}
	go func() {
		var peak procStats
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if st, err := readStats(pid); err == nil {
				peak.rssKiB = max(peak.rssKiB, st.rssKiB)
				peak.fds = max(peak.fds, st.fds)
				peak.sockets = max(peak.sockets, st.sockets)
			}
			select {
			case <-s.stop:
				s.done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *sampler) peak() procStats { close(s.stop); return <-s.done }

// closerServer serves short connections on the host's loopback: it writes one byte and
// closes first, so that usernet's side ends in TIME_WAIT. It counts open connections.
func closerServer(t *testing.T) (string, *atomic.Int64) {
	ln := listenTCP(t, "127.0.0.1:0")
	var open atomic.Int64
	serveTCP(t, ln, func(c *net.TCPConn) {
		open.Add(1)
		defer open.Add(-1)
		c.Write([]byte("x"))
	})
	return port(ln.Addr()), &open
}

// smallEchoServer echoes with a small buffer (idle connections by the thousand), counting
// open connections.
func smallEchoServer(t *testing.T) (string, *atomic.Int64) {
	ln := listenTCP(t, "127.0.0.1:0")
	var open atomic.Int64
	serveTCP(t, ln, func(c *net.TCPConn) {
		open.Add(1)
		defer open.Add(-1)
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		io.CopyBuffer(c, struct{ io.Reader }{c}, make([]byte, 4096))
	})
	return port(ln.Addr()), &open
}

func pctl(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func probeSummary(p Probes) string {
	return fmt.Sprintf("%d probes: p50 %.1f ms, p90 %.1f ms, max %.1f ms; errors %v",
		len(p.MS), pctl(p.MS, 0.5), pctl(p.MS, 0.9), pctl(p.MS, 1), p.Errors)
}

// checkProbes fails on gross failures only: a probe that failed, or took over 3 s.
func checkProbes(t *testing.T, what string, p Probes) {
	t.Helper()
	t.Logf("%s: %s", what, probeSummary(p))
	if len(p.Errors) > 0 || len(p.MS) == 0 || pctl(p.MS, 1) > 3000 {
		t.Errorf("%s: probes failed or took over 3 s: %s", what, probeSummary(p))
	}
}

// TestStressTCPChurn: short connections, 32 at a time, each closed by the host first (so
// that usernet's side sits in TIME_WAIT when the namespace reuses the port). Prints how
// many took over 1 s; fails on any error or any over 3 s.
func TestStressTCPChurn(t *testing.T) {
	setup(t)
	usernetOnly(t, "figures for usernet's limits")
	t.Parallel()
	n := stressSize(5000, 50000)
	ctx := testContext(t, time.Duration(n/100+60)*time.Second)
	tg := newTarget(t)
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	p, _ := closerServer(t)
	before := statsOf(t, un.cmd.Process.Pid)
	start := time.Now()
	var res ChurnResult
	tg.helper(t, ctx, &res, "tcp-churn", "10.0.2.2:"+p, strconv.Itoa(n), "32")
	t.Logf("churn: %d connections in %v, %d over 1 s, %d over 3 s, max %.1f ms, errors %v; usernet before %v, after %v",
		res.Conns, time.Since(start).Round(time.Millisecond), res.Over1s, res.Over3s, res.MaxMS, res.Errors, before, statsOf(t, un.cmd.Process.Pid))
	// A very rare refused connect shows under the whole suite's load (1 in
	// 5000, once in several runs; never alone): counted and printed, and
	// more than 1 in 1000 fails.
	errs := 0
	for _, c := range res.Errors {
		errs += c
	}
	if res.Conns != n || errs*1000 > n || res.Over3s > 0 {
		t.Errorf("churn: %+v; want %d connections, at most %d errors, none over 3 s", res, n, n/1000)
	}
}

// TestStressTCPBlackHole: 5000 connects to an address that never answers, all at once; new
// connections elsewhere must stay fast meanwhile. The destination's dials are capped
// (--tcp-max-dials-per-dest), so most of the 5000 are refused at once.
func TestStressTCPBlackHole(t *testing.T) {
	setup(t)
	usernetOnly(t, "usernet's TCP limits")
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	tg := newTarget(t)
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	p, _ := closerServer(t)
	before := statsOf(t, un.cmd.Process.Pid)
	s := sample(un.cmd.Process.Pid)
	const n, perDest = 5000, 256 // perDest: stack.DefaultTCPMaxDialsPerDest
	var res BlackHoleResult
	tg.helper(t, ctx, &res, "tcp-blackhole", blackHole, strconv.Itoa(n), "10.0.2.2:"+p, "5")
	peak := s.peak()
	t.Logf("black hole: %d connects: %d refused, %d pending, %d other; usernet before %v, peak %v",
		res.Started, res.Refused, res.Pending, res.Other, before, peak)
	checkProbes(t, "probes to the gateway during the black hole", res.Probes)
	if res.Started != n || res.Pending > perDest || res.Refused < n-perDest {
		t.Errorf("black hole: %+v; want at most %d pending, the rest refused", res, perDest)
	}
	if peak.sockets > before.sockets+perDest+64 {
		t.Errorf("usernet's sockets: %d at the peak, %d before; want at most %d more", peak.sockets, before.sockets, perDest+64)
	}
}

// TestStressTCPSYNFlood: raw SYNs from the namespace to a listening and to a closed port of
// the gateway, with the namespace's own RSTs dropped (a scanner), so that no handshake
// completes. usernet's host sockets stay within the half-open limit (plus evicted attempts
// being reset), are all closed after the handshake timeout, and its memory comes back;
// probes get through (their latency is printed).
func TestStressTCPSYNFlood(t *testing.T) {
	setup(t)
	usernetOnly(t, "usernet's TCP limits")
	t.Parallel()
	n := stressSize(10000, 100000)
	ctx := testContext(t, time.Duration(n/500+90)*time.Second)
	tg := newTarget(t)
	const halfOpen = 1024 // stack.DefaultTCPMaxHalfOpen
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--tcp-handshake-timeout=2s"}})
	pid := un.cmd.Process.Pid
	if out, err := tg.tryNsenter(ctx, "iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"); err != nil {
		t.Skipf("cannot drop the namespace's RSTs: %v %s", err, out)
	}
	open, openConns := smallEchoServer(t)
	probeP, _ := closerServer(t)
	closed := closedPort(t)
	before := statsOf(t, pid)
	for _, dst := range []string{"10.0.2.2:" + open, "10.0.2.2:" + closed} {
		s := sample(pid)
		var res FloodResult
		tg.helper(t, ctx, &res, "syn-flood", "10.0.2.100", dst, strconv.Itoa(n), "20000", "10.0.2.2:"+probeP)
		peak := s.peak()
		t.Logf("flood of %d SYNs to %s: usernet before %v, peak %v", res.Sent, dst, before, peak)
		// A flood faster than usernet can reset may cost a probe (its attempt evicted
		// before its handshake was seen): printed, not asserted, unless none got through.
		t.Logf("probes during the flood to %s: %s", dst, probeSummary(res.Probes))
		if len(res.Probes.MS) == 0 {
			t.Errorf("no probe got through during the flood to %s: %s", dst, probeSummary(res.Probes))
		}
		// Host sockets: the half-open attempts, and evicted ones still being reset (no
		// more than gVisor's forwarder lets through: twice the half-open limit).
		if peak.sockets > before.sockets+2*halfOpen+64 {
			t.Errorf("usernet's sockets: %d at the peak, %d before; want at most twice the half-open limit (%d) more", peak.sockets, before.sockets, halfOpen)
		}
	}
	// The handshake timeout (2 s) closes what is left; memtrim (every 5 s) gives the
	// memory back, all but the heap's fragmentation (20-50 MiB after the short form's
	// floods, whose peak is 60-80 MiB; 32 MiB after the long form's, peak 130 MiB).
	const rssBack = 64 << 10 // KiB
	var after procStats
	deadline := time.Now().Add(20 * time.Second)
	for {
		after = statsOf(t, pid)
		back := after.fds <= before.fds+8 && openConns.Load() == 0 && after.rssKiB <= rssBack
		if back || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("after the floods: usernet %v; host server's connections still open: %d", after, openConns.Load())
	if after.fds > before.fds+8 || openConns.Load() != 0 {
		t.Errorf("after the floods: usernet %v (before %v), %d host connections open; want the fds back and none open", after, before, openConns.Load())
	}
	if after.rssKiB > rssBack {
		t.Errorf("after the floods: usernet's RSS %.1f MiB; want it back under %d MiB", float64(after.rssKiB)/1024, rssBack>>10)
	}
}

// TestStressTCPIdleMemory: 1000 idle connections through the gateway, then closed. Prints
// usernet's memory per idle connection and after they closed; fails when an idle connection
// costs more than 32 KiB (about 25 KiB today, 38 KiB before issue 12) or the memory does not
// come back.
func TestStressTCPIdleMemory(t *testing.T) {
	setup(t)
	usernetOnly(t, "usernet's memory")
	t.Parallel()
	const n = 1000
	ctx := testContext(t, 2*time.Minute)
	tg := newTarget(t)
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c"}})
	pid := un.cmd.Process.Pid
	p, open := smallEchoServer(t)
	before := statsOf(t, pid)
	done := make(chan HoldResult, 1)
	go func() {
		var res HoldResult
		tg.helper(t, ctx, &res, "tcp-hold", "10.0.2.2:"+p, strconv.Itoa(n), "14")
		done <- res
	}()
	var held procStats
	deadline := time.Now().Add(30 * time.Second)
	for open.Load() < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(8 * time.Second) // idle: buffers given back, memtrim has looked
	held = statsOf(t, pid)
	res := <-done
	if res.Opened != n {
		t.Fatalf("tcp-hold: %+v; want %d open", res, n)
	}
	var after procStats
	for range 100 { // memtrim looks every 5 s
		after = statsOf(t, pid)
		if after.sockets <= before.sockets && open.Load() == 0 && after.rssKiB <= before.rssKiB+16<<10 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	per := float64(held.rssKiB-before.rssKiB) / n
	t.Logf("idle connections: before %v; %d idle %v (%.1f KiB each); closed %v", before, n, held, per, after)
	// An idle relay holds no goroutine (relay.ReadNotifier): about 11 KiB,
	// against 19 with a goroutine per direction.
	if per > 16 {
		t.Errorf("an idle connection costs %.1f KiB of usernet's RSS; want at most 16", per)
	}
	if after.rssKiB > before.rssKiB+16<<10 {
		t.Errorf("after closing: %v, before %v; want the memory back (within 16 MiB)", after, before)
	}
	if after.fds > before.fds+8 {
		t.Errorf("after closing: %v, before %v; want the fds back", after, before)
	}
}
