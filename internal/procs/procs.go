// Package procs gives usernet's Go code more than one P only while its
// goroutines queue for the one it has.
//
// On one P (GOMAXPROCS=1) a chain of goroutine hand-offs — one connection's
// frames going tap reader → TCP processor → relay → host socket and back —
// runs on one thread without waking another, which a second P would do at
// every hand-off, taking a core from the namespace's program or the host's
// server. Many connections at once are the opposite case: their goroutines
// are runnable together, wait for the one P in turn, and a second core
// would run them. Run watches how long goroutines wait to be scheduled and
// moves GOMAXPROCS between 1 and the number of cores.
package procs

import (
	"context"
	"runtime"
	"runtime/metrics"
	"time"
)

// Sample is what Run measured over one interval.
type Sample struct {
	// Waiting is the mean number of goroutines that were runnable but
	// waited for a P at least MinWait, over the interval (their summed
	// waits ÷ the interval).
	Waiting float64
	// Procs is GOMAXPROCS after the interval's decision.
	Procs int
}

// Config is how Run decides. The zero value of a field takes its default.
type Config struct {
	Interval time.Duration // between looks; 100 ms
	Max      int           // Ps when busy; runtime.NumCPU()
	// MinWait: shorter waits are a chain's ordinary hand-offs (the waker
	// runs on until it blocks) and do not count; 50 µs.
	MinWait time.Duration
	// Up: Waiting at or above it in one interval on one P raises
	// GOMAXPROCS to Max; 0.5.
	Up float64
	// Down: Waiting below it for Hold consecutive intervals on Max Ps
	// lowers GOMAXPROCS to 1; 0.05 and 10.
	Down float64
	Hold int
	// Trace, when set, sees every interval's sample (debugging).
	Trace func(Sample)
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = 100 * time.Millisecond
	}
	if c.Max <= 0 {
		c.Max = runtime.NumCPU()
	}
	if c.MinWait <= 0 {
		c.MinWait = 50 * time.Microsecond
	}
	if c.Up <= 0 {
		c.Up = 0.5
	}
	if c.Down <= 0 {
		c.Down = 0.05
	}
	if c.Hold <= 0 {
		c.Hold = 10
	}
}

// Run sets GOMAXPROCS to 1 and adapts it until ctx ends; it leaves it at
// 1. On a single-core machine it only sets it.
func Run(ctx context.Context, c Config) {
	c.defaults()
	runtime.GOMAXPROCS(1)
	if c.Max <= 1 {
		return
	}
	defer runtime.GOMAXPROCS(1)
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	w := newWaits(c.MinWait)
	procs, calm := 1, 0
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s := Sample{Waiting: w.since(now.Sub(last)), Procs: procs}
			last = now
			s.Procs, calm = decide(c, procs, calm, s.Waiting)
			if s.Procs != procs {
				procs = s.Procs
				runtime.GOMAXPROCS(procs)
			}
			if c.Trace != nil {
				c.Trace(s)
			}
		}
	}
}

// decide is Run's rule: the Ps for the next interval, and how many calm
// intervals in a row there have been on Max Ps.
func decide(c Config, procs, calm int, waiting float64) (int, int) {
	if procs == 1 {
		if waiting >= c.Up {
			return c.Max, 0
		}
		return 1, 0
	}
	if waiting >= c.Down {
		return procs, 0
	}
	if calm+1 >= c.Hold {
		return 1, 0
	}
	return procs, calm + 1
}

// sampleRate: the runtime records one goroutine scheduling in eight in
// the latency histogram (runtime's gTrackingPeriod).
const sampleRate = 8

// waits reads the scheduler's latency histogram.
type waits struct {
	minWait float64
	s       []metrics.Sample
	prev    []uint64
}

func newWaits(minWait time.Duration) *waits {
	w := &waits{minWait: minWait.Seconds(), s: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	w.since(0)
	return w
}

// since returns the waits of at least minWait since the last call, summed
// (each counted at its bucket's lower bound) and divided by d.
func (w *waits) since(d time.Duration) float64 {
	metrics.Read(w.s)
	if w.s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.s[0].Value.Float64Histogram()
	if len(w.prev) != len(h.Counts) {
		w.prev = make([]uint64, len(h.Counts))
		copy(w.prev, h.Counts)
		return 0
	}
	var sum float64
	for i, n := range h.Counts {
		lo := h.Buckets[i]
		if lo >= w.minWait && n > w.prev[i] {
			sum += float64(n-w.prev[i]) * lo
		}
		w.prev[i] = n
	}
	if d <= 0 {
		return 0
	}
	// The runtime times one scheduling of a goroutine in sampleRate.
	return sampleRate * sum / d.Seconds()
}
