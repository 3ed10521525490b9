// Package memtrim gives the memory of a burst back to the system once the
// burst is over. The Go runtime returns freed heap to the system only
// slowly, and collects garbage only as new allocations call for it, so
// after a burst (thousands of connections, a SYN flood) an idle process
// keeps its peak resident size for minutes.
package memtrim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Run looks every interval at how much heap the process holds beyond its
// live data (garbage not yet collected, free pages not yet returned); when
// that exceeds both min and the live heap itself, it collects and returns
// what it can (debug.FreeOSMemory). It returns when ctx ends.
func Run(ctx context.Context, interval time.Duration, min uint64) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if excess, live := Excess(); excess > min && excess > live {
			debug.FreeOSMemory()
		}
	}
}

var names = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/live:bytes",
}

// Excess returns the heap the process holds beyond its live data as of the
// last collection, and that live heap.
func Excess() (excess, live uint64) {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	var v [3]uint64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	held := v[0] + v[1]
	if held < v[2] {
		return 0, v[2]
	}
	return held - v[2], v[2]
}
