package main

import (
	"fmt"
	"strings"
)

// The targets of the performance issue (round 2), each checked against one
// run's medians, so that a report says which are met without arithmetic by
// hand. A target compares usernet's median with a reference: another
// backend's median (or the best of the peers), a constant, or another
// metric of usernet's.
type target struct {
	what   string
	metric string // usernet's metric
	// ref names the reference: "peers" (the best of slirp4netns, pasta,
	// pasta-2025), a backend name, "loopback", "const", or "metric:ID"
	// (usernet's own).
	ref    string
	factor float64 // the bound is factor × the reference (const: the bound)
	higher bool    // usernet must be at least the bound, else at most
	who    string  // the backend measured; "" is usernet
}

var targets = []target{
	{what: "connect/request/close, 16 clients ≥ 1.3 × pasta 2025", metric: "crr_c16_tps", ref: "pasta-2025", factor: 1.3, higher: true},
	{what: "connect/request/close, 16 clients ≥ 3 × slirp4netns", metric: "crr_c16_tps", ref: "slirp4netns", factor: 3, higher: true},
	{what: "request/response, 16 clients ≥ 1.5 × the better peer", metric: "rr_c16_tps", ref: "peers", factor: 1.5, higher: true},
	{what: "connect/request/close rises from 1 to 4 clients", metric: "crr_c4_tps", ref: "metric:crr_tps", factor: 1, higher: true},
	{what: "1-byte ping-pong p50 ≤ the better peer", metric: "rr_p50", ref: "peers", factor: 1},
	{what: "1-byte ping-pong p99 ≤ the better peer", metric: "rr_p99", ref: "peers", factor: 1},
	{what: "connect/request/close through a forward ≥ pasta 2025", metric: "crr_fwd_tps", ref: "pasta-2025", factor: 1, higher: true},
	{what: "the same, usernet as pasta (both splice loopback clients)", metric: "crr_fwd_tps", ref: "pasta-2025", factor: 1, higher: true, who: "usernet-pasta"},
	{what: "the same, 16 clients", metric: "crr_fwd_c16_tps", ref: "pasta-2025", factor: 1, higher: true},
	{what: "the same, 16 clients, usernet as pasta", metric: "crr_fwd_c16_tps", ref: "pasta-2025", factor: 1, higher: true, who: "usernet-pasta"},
	{what: "idle RSS ≤ 6 MiB", metric: "mem_idle", ref: "const", factor: 6},
	{what: "≤ 8 KiB per idle connection", metric: "mem_per_conn", ref: "const", factor: 8},
	{what: "RSS 5 s after 1000 connections close ≤ 1.25 × idle", metric: "mem_closed", ref: "metric:mem_idle", factor: 1.25},
	{what: "50 idle instances ≤ 0.5 × 50 × slirp4netns's idle RSS", metric: "mem_fleet_total", ref: "slirp4netns:mem_idle", factor: 25},
	{what: "startup (ready fd) ≤ slirp4netns's", metric: "start_readyfd", ref: "slirp4netns", factor: 1},
	{what: "startup (tap configured) ≤ slirp4netns's", metric: "start_poll", ref: "slirp4netns", factor: 1},
	{what: "UDP at 1 Gbit/s offered: loss ≤ slirp4netns's", metric: "udp_1g_loss", ref: "slirp4netns", factor: 1},
	{what: "TCP ns→host, MTU 65520 ≥ 0.65 × host loopback", metric: "tcp_n2h_65520", ref: "loopback", factor: 0.65, higher: true},
	{what: "TCP ns→host, MTU 1500 ≥ 0.65 × host loopback", metric: "tcp_n2h_1500", ref: "loopback", factor: 0.65, higher: true},
	{what: "TCP host→ns, MTU 65520 ≥ 0.65 × host loopback", metric: "tcp_h2n_65520", ref: "loopback", factor: 0.65, higher: true},
	{what: "TCP host→ns, MTU 1500 ≥ 0.65 × host loopback", metric: "tcp_h2n_1500", ref: "loopback", factor: 0.65, higher: true},
	{what: "TCP through a forward ≥ 0.65 × host loopback", metric: "tcp_fwd_65520", ref: "loopback", factor: 0.65, higher: true},
	{what: "TCP through a forward (-R) ≥ 0.65 × host loopback", metric: "tcp_fwdr_65520", ref: "loopback", factor: 0.65, higher: true},
	{what: "CPU ns→host, MTU 65520 ≤ 1.3 × pasta 2025's", metric: "cpu_n2h_65520", ref: "pasta-2025", factor: 1.3},
	{what: "CPU host→ns, MTU 65520 ≤ 1.3 × pasta 2025's", metric: "cpu_h2n_65520", ref: "pasta-2025", factor: 1.3},
	{what: "CPU ns→host, MTU 1500 ≤ 1.3 × pasta 2025's", metric: "cpu_n2h_1500", ref: "pasta-2025", factor: 1.3},
	{what: "CPU host→ns, MTU 1500 ≤ 1.3 × pasta 2025's", metric: "cpu_h2n_1500", ref: "pasta-2025", factor: 1.3},
	{what: "CPU through a forward ≤ 1.3 × pasta 2025's", metric: "cpu_fwd_65520", ref: "pasta-2025", factor: 1.3},
	{what: "CPU through a forward (-R) ≤ 1.3 × pasta 2025's", metric: "cpu_fwdr_65520", ref: "pasta-2025", factor: 1.3},
}

// peerNames are the backends "the better peer" is chosen from.
var peerNames = []string{"slirp4netns", "pasta", "pasta-2025"}

// median is metric id's median for backend b, or false without one.
func median(r *Results, id, b string) (float64, bool) {
	for _, m := range r.Metrics {
		if m.ID != id {
			continue
		}
		s := m.Results[b]
		if s == nil || s.NA != "" || len(s.Samples) == 0 {
			return 0, false
		}
		return s.Median, true
	}
	return 0, false
}

// unitOf is metric id's unit.
func unitOf(r *Results, id string) string {
	for _, m := range r.Metrics {
		if m.ID == id {
			return m.Unit
		}
	}
	return ""
}

// reference is t's reference value and what it is, or false when the run
// lacks it.
func (t target) reference(r *Results, better bool) (float64, string, bool) {
	switch {
	case t.ref == "const":
		return 1, "", true
	case t.ref == "loopback":
		if lo := r.Loopback; lo != nil && lo.NA == "" && len(lo.Samples) > 0 {
			return lo.Median, "host loopback " + num(lo.Median), true
		}
		return 0, "", false
	case t.ref == "peers":
		best, name, ok := 0.0, "", false
		for _, p := range peerNames {
			v, has := median(r, t.metric, p)
			if !has {
				continue
			}
			if !ok || (better && v > best) || (!better && v < best) {
				best, name, ok = v, p, true
			}
		}
		return best, name + " " + num(best), ok
	case strings.HasPrefix(t.ref, "metric:"):
		id := strings.TrimPrefix(t.ref, "metric:")
		v, ok := median(r, id, "usernet")
		return v, fmt.Sprintf("usernet `%s` %s", id, num(v)), ok
	case strings.Contains(t.ref, ":"):
		b, id, _ := strings.Cut(t.ref, ":")
		v, ok := median(r, id, b)
		return v, fmt.Sprintf("%s `%s` %s", b, id, num(v)), ok
	default:
		v, ok := median(r, t.metric, t.ref)
		return v, t.ref + " " + num(v), ok
	}
}

// targetsTable writes the targets section: each target, usernet's figure,
// the reference, the bound and whether it is met.
func targetsTable(p func(string, ...any), r *Results) {
	p("\n## Targets\n\nThe performance issue's targets against this run's medians (usernet is the slirp4netns command line unless the row says otherwise).\n\n")
	p("| target | measured | reference | bound | met |\n|---|---|---|---|---|\n")
	for _, t := range targets {
		who := t.who
		if who == "" {
			who = "usernet"
		}
		v, ok := median(r, t.metric, who)
		ref, refText, rok := t.reference(r, t.higher)
		if !ok || !rok {
			p("| %s | — | — | — | not measured |\n", t.what)
			continue
		}
		bound := t.factor * ref
		met := v <= bound
		if t.higher {
			met = v >= bound
		}
		mark := "no"
		if met {
			mark = "**yes**"
		}
		if t.ref == "const" {
			refText = "—"
		}
		unit := unitOf(r, t.metric)
		p("| %s | %s %s (%s) | %s | %s %s | %s |\n", t.what, num(v), unit, who, refText, map[bool]string{true: "≥", false: "≤"}[t.higher], num(bound), mark)
	}
}
