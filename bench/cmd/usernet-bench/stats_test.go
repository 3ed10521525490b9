package main

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func us(v ...int) []time.Duration {
	var d []time.Duration
	for _, x := range v {
		d = append(d, time.Duration(x)*time.Microsecond)
	}
	return d
}

// Percentiles of several clients come from all their samples together, not from the
// clients' own percentiles.
func TestMergeLatencies(t *testing.T) {
	fast := make([]time.Duration, 0, 90)
	for range 90 {
		fast = append(fast, 10*time.Microsecond)
	}
	slow := us(1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000) // 10 samples
	all := mergeLatencies([][]time.Duration{slow, nil, fast})
	if len(all) != 100 || !slices.IsSorted(all) {
		t.Fatalf("merged %d samples, sorted %v", len(all), slices.IsSorted(all))
	}
	if got := percentileUS(all, 50); got != 10 {
		t.Errorf("p50 = %v µs, want 10", got)
	}
	// 10 % of the transactions were slow: the run's p99 is slow, though the median of the
	// two clients' p99s would not say which.
	if got := percentileUS(all, 99); got != 1000 {
		t.Errorf("p99 = %v µs, want 1000", got)
	}
	if got := percentileUS(all, 89); got != 10 {
		t.Errorf("p89 = %v µs, want 10", got)
	}
	if got := percentileUS(all, 90); got != 1000 {
		t.Errorf("p90 = %v µs, want 1000", got)
	}
	if got := percentileUS(nil, 50); got != 0 {
		t.Errorf("empty: %v", got)
	}
	if got := percentileUS(us(7), 99); got != 7 {
		t.Errorf("one sample: p99 = %v", got)
	}
	if got := percentileUS(us(1, 2, 3), 100); got != 3 {
		t.Errorf("p100 = %v, want the largest", got)
	}
}

// The rule is the one the 1-client tool always used (lat[n*p/100]), so older reports compare.
func TestPercentileRule(t *testing.T) {
	lat := us(5, 1, 4, 2, 3, 9, 8, 7, 6, 10)
	slices.Sort(lat)
	for _, p := range []float64{50, 99} {
		old := float64(lat[len(lat)*int(p)/100].Nanoseconds()) / 1e3
		if got := percentileUS(lat, p); got != old {
			t.Errorf("p%v = %v, old rule %v", p, got, old)
		}
	}
}

func TestParseClients(t *testing.T) {
	got, err := parseClients("16, 1,64,4,16")
	if err != nil || !slices.Equal(got, []int{1, 4, 16, 64}) {
		t.Errorf("parseClients = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "1,,4", "x", "-4", "2000"} {
		if _, err := parseClients(bad); err == nil {
			t.Errorf("parseClients(%q): no error", bad)
		}
	}
}

func TestKBField(t *testing.T) {
	rollup := `55d0c0a00000-7ffd5a7f1000 ---p 00000000 00:00 0                          [rollup]
Rss:                9876 kB
Pss:                4321 kB
Pss_Dirty:          3000 kB
Pss_Anon:           2900 kB
Shared_Clean:       5000 kB
`
	if v, err := kBField(rollup, "Pss"); err != nil || v != 4321 {
		t.Errorf("Pss = %v, %v", v, err)
	}
	status := "Name:\tusernet\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n"
	if v, err := kBField(status, "VmRSS"); err != nil || v != 10240 {
		t.Errorf("VmRSS = %v, %v", v, err)
	}
	if _, err := kBField(status, "Threads"); err == nil {
		t.Error("Threads (no kB): no error")
	}
	if _, err := kBField(status, "VmSwap"); err == nil {
		t.Error("missing key: no error")
	}
	if _, err := kBField("Pss: many kB\n", "Pss"); err == nil {
		t.Error("not a number: no error")
	}
}

// One client keeps the names and labels older reports have; more get their own group.
func TestRRMetrics(t *testing.T) {
	one := rrMetrics([]int{1}, "5")
	var ids []string
	for _, m := range one {
		ids = append(ids, m.ID)
	}
	want := []string{"rr_tps", "rr_p50", "rr_p99", "crr_tps", "crr_p50", "crr_p99",
		"rr_fwd_tps", "rr_fwd_p50", "rr_fwd_p99", "crr_fwd_tps", "crr_fwd_p50", "crr_fwd_p99"}
	if !slices.Equal(ids, want) {
		t.Errorf("1 client: %q, want %q", ids, want)
	}
	labels := map[string]string{
		"rr_tps":      "1-byte ping-pong on one connection ns→host",
		"rr_p50":      "ping-pong latency p50",
		"crr_tps":     "connect + 1-byte request + response + close, ns→host",
		"crr_p99":     "connection transaction latency p99",
		"rr_fwd_tps":  "1-byte ping-pong on one connection host→ns through a port forward",
		"crr_fwd_p50": "connection transaction latency p50, through a port forward",
	}
	for _, m := range one {
		if l, ok := labels[m.ID]; ok && m.Label != l {
			t.Errorf("%s: label %q, want %q", m.ID, m.Label, l)
		}
		if m.Group != "TCP request/response" || strings.Contains(m.Command, " -c ") {
			t.Errorf("%s: group %q, command %q", m.ID, m.Group, m.Command)
		}
	}
	many := rrMetrics([]int{1, 16}, "5")
	if len(many) != 24 {
		t.Fatalf("%d metrics for 1 and 16 clients", len(many))
	}
	m := many[12+9] // crr_fwd with 16 clients
	if m.ID != "crr_fwd_c16_tps" || m.Unit != "conn/s" || !strings.Contains(m.Command, "-mode crr -c 16 -addr 127.0.0.1:FWD2") ||
		!strings.HasPrefix(m.Label, "16 clients, ") || m.Group != "TCP request/response, 16 clients at once" {
		t.Errorf("16 clients: %+v", m)
	}
	if rrName("rr", false, 4) != "rr_c4" || rrName("crr", true, 1) != "crr_fwd" {
		t.Error("rrName")
	}
}

func TestOfLoopback(t *testing.T) {
	lo := &Series{Samples: []float64{20, 22, 21}}
	lo.finish()
	s := &Series{Samples: []float64{14}}
	s.finish()
	if got := ofLoopback(s, lo); got != "0.67" {
		t.Errorf("14 of 21: %q", got)
	}
	if got := ofLoopback(&Series{NA: "dead"}, lo); got != "—" {
		t.Errorf("n/a: %q", got)
	}
	r := &Results{Backends: []BackendInfo{{Name: "usernet"}}, Loopback: lo, Metrics: []*Metric{
		{ID: "tcp_n2h_65520", Group: "TCP bulk", Label: "TCP ns→host, MTU 65520", Unit: "Gbit/s", Results: map[string]*Series{"usernet": s}},
		{ID: "udp_1g_rate", Group: "UDP", Label: "UDP", Unit: "Gbit/s", Results: map[string]*Series{"usernet": s}},
	}}
	var b strings.Builder
	loopbackTable(func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }, r)
	if !strings.Contains(b.String(), "| TCP ns→host, MTU 65520 | 0.67 |") || strings.Contains(b.String(), "| UDP |") {
		t.Errorf("table:\n%s", b.String())
	}
}

// The rr tool with several clients, against a real echo server on the loopback.
func TestRunRRClients(t *testing.T) {
	srv, err := startHostServers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	addr := srv.echoLn.Addr().String()
	for _, mode := range []string{"rr", "crr"} {
		r, err := runRR(mode, addr, 300*time.Millisecond, 4)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if r.Clients != 4 || r.Transactions == 0 || r.TPS <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.Errors != 0 {
			t.Errorf("%s: %+v", mode, r)
		}
	}
	// Every rr client holds its own connection: 4 more accepted.
	before := srv.accepted.Load()
	if _, err := runRR("rr", addr, 50*time.Millisecond, 4); err != nil {
		t.Fatal(err)
	}
	if got := srv.accepted.Load() - before; got != 4 {
		t.Errorf("rr -c 4 made %d connections", got)
	}
	if _, err := runRR("rr", addr, time.Millisecond, 0); err == nil {
		t.Error("0 clients: no error")
	}
}

// The UDP storm against the host's UDP echo server; with nothing listening, every query is
// lost and the tool says so.
func TestRunUDPFlows(t *testing.T) {
	srv, err := startHostServers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	r, err := runUDPFlows(srv.udpEcho.LocalAddr().String(), 50, 64, 300*time.Millisecond, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Flows != 50 || r.Answered == 0 || r.QPS <= 0 || r.Sent < r.Answered || r.Answered+r.Lost != r.Sent || r.P99us < r.P50us {
		t.Errorf("%+v", r)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := pc.LocalAddr().String()
	pc.Close()
	if _, err := runUDPFlows(silent, 2, 64, 100*time.Millisecond, 20*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no query answered") {
		t.Errorf("no server: %v", err)
	}
}

func TestPSSEstimate(t *testing.T) {
	status := "VmRSS:\t  12288 kB\nRssAnon:\t   4096 kB\nRssFile:\t   8192 kB\nRssShmem:\t   1024 kB\n"
	if v, err := pssEstimateMiB(status, 8); err != nil || v != 6 {
		t.Errorf("estimate = %v, %v; want 4 + 1 + 8/8 = 6 MiB", v, err)
	}
	if _, err := pssEstimateMiB("VmRSS:\t1 kB\n", 8); err == nil {
		t.Error("no RssAnon: no error")
	}
}
