package pollfd

import (
	"context"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWaitReturnsOnHangup(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() { done <- Wait(context.Background(), int(r.Fd())) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before the writer closed", err)
	case <-time.After(50 * time.Millisecond):
	}
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait after close of writer = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the writer closed")
	}
}

func TestWaitCanceled(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Wait(ctx, int(r.Fd())) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
}

func TestIsOpen(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fd := int(r.Fd())
	if !IsOpen(fd) {
		t.Fatalf("IsOpen(%d) = false for an open pipe", fd)
	}
	r.Close()
	w.Close()
	if IsOpen(fd) {
		t.Fatalf("IsOpen(%d) = true after close", fd)
	}
}

// TestWaitRaceNoStrayWakeup: an event on fd and the cancellation come at
// the same moment, many times. Wait must never write its wake-up into an fd
// number it has closed: pipes made right after Wait returns (which take the
// numbers it freed) must stay empty.
func TestWaitRaceNoStrayWakeup(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	stray := 0
	for i := range n {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Wait(ctx, int(r.Fd())) }()
		if i%2 == 0 {
			runtime.Gosched()
		}
		go w.Close()
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("iteration %d: Wait = %v", i, err)
		}
		r.Close()
		// These take the numbers just freed; a late wake-up would land in one.
		var ps [3][2]int
		for j := range ps {
			if err := unix.Pipe2(ps[j][:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Microsecond)
		for _, p := range ps {
			var b [16]byte
			if n, _ := unix.Read(p[0], b[:]); n > 0 {
				stray++
			}
			unix.Close(p[0])
			unix.Close(p[1])
		}
	}
	if stray > 0 {
		t.Fatalf("%d of %d iterations: a wake-up byte landed in a pipe made after Wait returned", stray, n)
	}
}
