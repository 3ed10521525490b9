package main

import (
	"fmt"
	"strings"
	"testing"
)

func series(v float64) *Series { return &Series{Samples: []float64{v}, Median: v, Min: v, Max: v} }

// TestTargetsTable: a bound from the best peer, from a constant and from
// usernet's own metric; met and not met both ways; a missing reference.
func TestTargetsTable(t *testing.T) {
	r := &Results{Metrics: []*Metric{
		{ID: "crr_c16_tps", Unit: "conn/s", Results: map[string]*Series{"usernet": series(14000), "pasta-2025": series(10000), "slirp4netns": series(2000)}},
		{ID: "rr_p50", Unit: "µs", Results: map[string]*Series{"usernet": series(50), "pasta": series(45), "pasta-2025": series(48), "slirp4netns": series(100)}},
		{ID: "mem_per_conn", Unit: "KiB", Results: map[string]*Series{"usernet": series(7.5)}},
		{ID: "crr_tps", Unit: "conn/s", Results: map[string]*Series{"usernet": series(4000)}},
		{ID: "crr_c4_tps", Unit: "conn/s", Results: map[string]*Series{"usernet": series(3900)}},
	}}
	var b strings.Builder
	targetsTable(func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }, r)
	out := b.String()
	for _, want := range []string{
		"| connect/request/close, 16 clients ≥ 1.3 × pasta 2025 | 14000 conn/s (usernet) | pasta-2025 10000 | ≥ 13000 | **yes** |",
		"| connect/request/close, 16 clients ≥ 3 × slirp4netns | 14000 conn/s (usernet) | slirp4netns 2000 | ≥ 6000 | **yes** |",
		"| 1-byte ping-pong p50 ≤ the better peer | 50.0 µs (usernet) | pasta 45.0 | ≤ 45.0 | no |",
		"| ≤ 8 KiB per idle connection | 7.50 KiB (usernet) | — | ≤ 8.00 | **yes** |",
		"| connect/request/close rises from 1 to 4 clients | 3900 conn/s (usernet) | usernet `crr_tps` 4000 | ≥ 4000 | no |",
		"| idle RSS ≤ 6 MiB | — | — | — | not measured |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("targets table lacks\n%s\nin\n%s", want, out)
		}
	}
}
