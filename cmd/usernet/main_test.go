package main

import (
	"runtime"
	"testing"
)

func TestOneProc(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS unset: oneProc left %d Ps, want 1", got)
	}

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "4")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 4 {
		t.Errorf("GOMAXPROCS=4 set by the user: oneProc changed it to %d", got)
	}
	if adaptProcs {
		t.Errorf("GOMAXPROCS=4: adaptProcs set")
	}

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "auto")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 1 || !adaptProcs {
		t.Errorf("GOMAXPROCS=auto: %d Ps, adaptProcs %v; want 1, true", got, adaptProcs)
	}
	adaptProcs = false
}
