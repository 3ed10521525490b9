package memtrim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

var sink [][]byte

// TestRunGivesBackABurst: after a burst of garbage, Run brings the heap the
// process holds back near its live data.
func TestRunGivesBackABurst(t *testing.T) {
	runtime.GC()
	old := debug.SetGCPercent(-1) // a burst the collector does not see
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	debug.SetGCPercent(old)
	if excess, _ := Excess(); excess < 32<<20 {
		t.Skipf("the runtime already collected the burst (excess %d)", excess)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 10*time.Millisecond, 8<<20, 8<<20); close(done) }()
	deadline := time.Now().Add(time.Second)
	for {
		excess, live := Excess()
		if excess < 8<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("excess heap %d bytes (live %d) 1 s after the burst; want it given back", excess, live)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

var held [][]byte

// TestRunCollectsWhenIdle: live data that becomes garbage after the last
// collection (connections that closed) is collected and returned although
// nothing allocates after it.
func TestRunCollectsWhenIdle(t *testing.T) {
	for range 48 {
		held = append(held, make([]byte, 1<<20))
	}
	runtime.GC() // the 48 MiB are live as of this collection
	held = nil
	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 10*time.Millisecond, 8<<20, 8<<20); close(done) }()
	deadline := time.Now().Add(time.Second)
	for {
		_, live := Excess()
		if live < 16<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("live heap %d bytes 1 s after the data was dropped; want it collected", live)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestRunCollectsSoonAfterABurst: a burst that makes the runtime collect
// and ends with garbage is given back within about half an interval of
// its end, not at the second look after it (up to two intervals).
func TestRunCollectsSoonAfterABurst(t *testing.T) {
	runtime.GC()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const interval = 2 * time.Second
	go func() { Run(ctx, interval, 1<<40, 8<<20); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond) // Run has read the heap before the burst
	before := read()
	var window [][]byte
	for range 256 {
		window = append(window, make([]byte, 1<<20))
		if len(window) > 24 {
			window = window[1:]
		}
	}
	window = nil
	end := time.Now()
	if h := read(); h.cycles == before.cycles {
		t.Skip("the runtime did not collect during the burst")
	}
	for {
		h := read()
		if h.objects+h.free < 8<<20 {
			t.Logf("given back %v after the burst", time.Since(end).Round(time.Millisecond))
			return
		}
		if time.Since(end) > interval*3/4 {
			t.Fatalf("heap %d bytes in objects and free pages %v after the burst; want it given back within about half an interval (%v)",
				h.objects+h.free, time.Since(end).Round(time.Millisecond), interval/2)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCollectedAfterFirstCollection: Run starts looking at the heap once the
// runtime has collected, and not before.
func TestCollectedAfterFirstCollection(t *testing.T) {
	select {
	case <-collected:
		// A collection ran already (test setup, another test); Run does
		// not wait.
	default:
		runtime.GC()
	}
	select {
	case <-collected:
	case <-time.After(10 * time.Second):
		t.Fatal("no sign of the first collection 10 s after runtime.GC")
	}
}

// TestNotCollectedWithoutCollection: in a process where no collection runs
// (GOGC=off, a child of this test), collected stays open.
func TestNotCollectedWithoutCollection(t *testing.T) {
	if os.Getenv("MEMTRIM_TEST_CHILD") != "" {
		for range 64 {
			sink = append(sink, make([]byte, 1<<20))
		}
		time.Sleep(50 * time.Millisecond)
		select {
		case <-collected:
			fmt.Println("collected")
		default:
			fmt.Println("not collected")
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNotCollectedWithoutCollection$")
	cmd.Env = append(os.Environ(), "MEMTRIM_TEST_CHILD=1", "GOGC=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "not collected") {
		t.Fatalf("child without a collection saw collected closed: %s", out)
	}
}
