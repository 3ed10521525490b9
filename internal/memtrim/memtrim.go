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
// least beyond its live data (free pages not yet returned), and also, once
// nothing much allocates and no collection runs by itself, when the heap
// holds more than idleLeast: connections that closed, or a burst that
// ended, left garbage that only a collection finds. A collection that
// finds little doubles the wait before the next idle one. It returns when
// ctx ends.
//
// While busy (the runtime collected since the last look, or more than an
// eighth of idleLeast was allocated) Run looks every quarter interval,
// and a collection of the runtime's own brings the next look to a quarter
// interval after it: the garbage of a burst (a thousand connections
// opened at once) is given back between a quarter and half an interval
// after its end rather than up to two intervals. That costs a read of the
// runtime's metrics a quarter interval while busy; an idle collection
// comes only after a quarter interval in which the process allocated
// little and the runtime did not collect.
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
	soon := interval / 4
	gc := make(chan struct{}, 1)
	notifyGC(ctx, gc)
	t := time.NewTimer(interval)
	defer t.Stop()
	due := time.Now().Add(interval)
	last := read()
	wait, waited := 1, 0 // looks between idle collections
	for {
		select {
		case <-ctx.Done():
			return
		case <-gc:
			// Not one of ours (last counts those).
			if now := time.Now(); now.Add(soon).Before(due) && cycles() != last.cycles {
				due = now.Add(soon)
				t.Reset(soon)
			}
			continue
		case <-t.C:
		}
		h := read()
		// Busy: the runtime collected by itself, or something allocates
		// (a burst may not have reached the runtime's next collection).
		busy := h.cycles != last.cycles || h.allocs-last.allocs > idleLeast/8
		if busy {
			wait, waited = 1, 0
		}
		waited++
		idle := !busy && waited >= wait && h.objects+h.free > idleLeast
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
		next := interval
		if busy {
			next = soon
		}
		due = time.Now().Add(next)
		t.Reset(next)
	}
}

// notifyGC sends on ch, without blocking, after every collection until ctx
// ends: a finalizer that sets itself again on the object it finalizes.
func notifyGC(ctx context.Context, ch chan<- struct{}) {
	type sentinel struct{ _ *byte } // not in the tiny allocator's blocks
	var fin func(*sentinel)
	fin = func(s *sentinel) {
		if ctx.Err() != nil {
			return
		}
		select {
		case ch <- struct{}{}:
		default:
		}
		runtime.SetFinalizer(s, fin)
	}
	runtime.SetFinalizer(&sentinel{}, fin)
}

// cycles returns the collections so far.
func cycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
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
	objects, free, live, cycles, allocs uint64
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
	"/gc/heap/allocs:bytes",
}

func read() heap {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	var v [5]uint64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return heap{objects: v[0], free: v[1], live: v[2], cycles: v[3], allocs: v[4]}
}
