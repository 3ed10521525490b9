// Package memtrim gives the memory of a burst back to the system once the
// burst is over. The Go runtime returns freed heap to the system only
// slowly, and collects garbage only as new allocations call for it, so
// after a burst (thousands of connections, a SYN flood) an idle process
// keeps its peak resident size for minutes.
package memtrim

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Run looks every interval at the heap the process holds. It collects and
// returns what it can (debug.FreeOSMemory) when the heap holds more than
// least beyond its live data (free pages not yet returned), and also, while
// no collection runs by itself (nothing allocates), when the heap holds
// more than idleLeast: connections that closed left garbage that only a
// collection finds. A collection that finds little doubles the wait before
// the next idle one. It returns when ctx ends.
//
// least guards busy times, when a collection competes with the work and
// the pages it returns are soon faulted in again; idleLeast may be
// smaller, as an idle collection costs nothing but its own CPU.
//
// Until the runtime has collected once, the heap has not grown past the
// collector's first goal and holds nothing to give back, so Run only
// waits for that (unless GOGC=off, when Run is the only collector): an
// instance that stays small never reads runtime/metrics, whose first
// read builds a table of every metric that stays in the heap.
func Run(ctx context.Context, interval time.Duration, least, idleLeast uint64) {
	if os.Getenv("GOGC") != "off" {
		select {
		case <-ctx.Done():
			return
		case <-collected:
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	last := read()
	wait, waited := 1, 0 // intervals between idle collections
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h := read()
		if h.cycles != last.cycles {
			wait, waited = 1, 0 // the runtime collects by itself: busy
		}
		waited++
		idle := h.cycles == last.cycles && waited >= wait && h.objects+h.free > idleLeast
		if excess := h.excess(); (excess > least && excess > h.live) || idle {
			debug.FreeOSMemory()
			after := read()
			if idle && h.objects+h.free-idleLeast < after.objects+after.free {
				wait = min(wait*2, 12) // found little: back off
			}
			waited = 0
			h = after
		}
		last = h
	}
}

// Excess returns the heap the process holds beyond its live data as of the
// last collection, and that live heap.
func Excess() (excess, live uint64) {
	h := read()
	return h.excess(), h.live
}

// collected is closed once the runtime has finished its first collection.
var collected = make(chan struct{})

func init() {
	// Unreachable at once, so the first collection finds it. The pointer
	// keeps it out of the tiny allocator, whose blocks outlive their
	// objects.
	runtime.AddCleanup(&struct{ _ *byte }{}, func(c chan struct{}) { close(c) }, collected)
}

type heap struct {
	objects, free, live, cycles uint64
}

func (h heap) excess() uint64 {
	if h.objects+h.free < h.live {
		return 0
	}
	return h.objects + h.free - h.live
}

var names = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/live:bytes",
	"/gc/cycles/total:gc-cycles",
}

func read() heap {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	var v [4]uint64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return heap{objects: v[0], free: v[1], live: v[2], cycles: v[3]}
}
