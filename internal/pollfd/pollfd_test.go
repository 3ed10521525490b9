package pollfd

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
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
