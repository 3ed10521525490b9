package ratelog

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

type sink struct {
	mu    sync.Mutex
	lines []string
	block chan struct{} // when not nil, writes wait for it
}

func (s *sink) write(line string) {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
}

func (s *sink) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func TestBurstThenSummary(t *testing.T) {
	var s sink
	l := New(s.write, 1, 5, 50*time.Millisecond)
	for i := range 100 {
		l.Logf("line %d", i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.get()) < 6 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	l.Close()
	got := s.get()
	if len(got) != 6 {
		t.Fatalf("got %d lines, want the burst of 5 and a summary: %q", len(got), got)
	}
	for i := range 5 {
		if got[i] != fmt.Sprintf("line %d", i) {
			t.Errorf("line %d = %q", i, got[i])
		}
	}
	if !strings.HasPrefix(got[5], "95 log lines suppressed") {
		t.Errorf("summary %q, want 95 suppressed", got[5])
	}
}

func TestNeverBlocks(t *testing.T) {
	s := sink{block: make(chan struct{})}
	l := New(s.write, 1e9, 1e9, time.Hour)
	start := time.Now()
	for i := range 10 * queueLen {
		l.Logf("line %d", i)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Logf with a stuck writer took %v", d)
	}
	if l.Suppressed() == 0 {
		t.Error("nothing counted as suppressed with a stuck writer and a full queue")
	}
	close(s.block)
	l.Close()
	got := s.get()
	if last := got[len(got)-1]; !strings.Contains(last, "suppressed") {
		t.Errorf("last line %q, want the summary written at Close", last)
	}
}

func TestAfterClose(t *testing.T) {
	var s sink
	l := New(s.write, 10, 10, time.Second)
	l.Close()
	l.Logf("late %d", 1)
	if got := s.get(); len(got) != 1 || got[0] != "late 1" {
		t.Errorf("after Close: %q, want the line written inline", got)
	}
}

func TestEvery(t *testing.T) {
	var e Every
	if !e.Allow(time.Hour) {
		t.Fatal("first event refused")
	}
	if e.Allow(time.Hour) {
		t.Fatal("second event within the interval allowed")
	}
	var f Every
	f.Allow(time.Millisecond)
	time.Sleep(2 * time.Millisecond)
	if !f.Allow(time.Millisecond) {
		t.Fatal("event after the interval refused")
	}
}
