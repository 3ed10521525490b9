package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer the flush timer and the test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func TestHeaderAndRecords(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	w.now = func() time.Time { return ts }
	frames := [][][]byte{
		{[]byte("one frame, one part")},
		// writev's slices: one record
		{[]byte("head|"), []byte("body"), nil, []byte("|tail")},
		// a TSO frame: 64 KiB and its Ethernet header
		{make([]byte, 65550)},
	}
	for _, f := range frames {
		w.WriteFrame(f...)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	w.WriteFrame([]byte("after Close")) // dropped

	want := []byte{
		0xd4, 0xc3, 0xb2, 0xa1, // magic, little-endian
		2, 0, 4, 0, // version 2.4
		0, 0, 0, 0, 0, 0, 0, 0, // thiszone, sigfigs
		0, 0, 4, 0, // snaplen 262144
		1, 0, 0, 0, // LINKTYPE_ETHERNET
	}
	if got := buf.Bytes()[:FileHeaderLen]; !bytes.Equal(got, want) {
		t.Fatalf("file header % x, want % x", got, want)
	}
	rh := buf.Bytes()[FileHeaderLen:][:RecordHeaderLen]
	if sec, usec := binary.LittleEndian.Uint32(rh[0:]), binary.LittleEndian.Uint32(rh[4:]); int64(sec) != ts.Unix() || usec != 123456 {
		t.Errorf("first record's time %d.%06d, want %d.123456", sec, usec, ts.Unix())
	}

	recs, err := ReadAll(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(frames) {
		t.Fatalf("%d records, want %d", len(recs), len(frames))
	}
	for i, f := range frames {
		whole := bytes.Join(f, nil)
		if r := recs[i]; !bytes.Equal(r.Data, whole) || r.OrigLen != len(whole) || !r.Time.Equal(ts.Truncate(time.Microsecond)) {
			t.Errorf("record %d: %d bytes (of %d) at %v, want %q (%d bytes) at %v", i, len(r.Data), r.OrigLen, r.Time, shorten(whole), len(whole), ts)
		}
	}
}

func shorten(b []byte) string {
	if len(b) > 32 {
		return fmt.Sprintf("%.32q...", b)
	}
	return string(b)
}

func TestSnapLen(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	a, b := bytes.Repeat([]byte{'a'}, SnapLen-10), bytes.Repeat([]byte{'b'}, 100)
	w.WriteFrame(a, b, []byte("c"))
	w.Close()
	recs, err := ReadAll(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || len(recs[0].Data) != SnapLen || recs[0].OrigLen != SnapLen+91 || !bytes.Equal(recs[0].Data, append(a, b[:10]...)) {
		t.Fatalf("got %d records; want one of %d bytes of %d, cut at the snap length", len(recs), SnapLen, SnapLen+91)
	}
}

// TestConcurrentWriters: frames from many goroutines each come out whole,
// none lost, none interleaved with another.
func TestConcurrentWriters(t *testing.T) {
	var buf syncBuffer
	w, err := NewWriter(&buf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	const writers, frames = 8, 500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range frames {
				// Sizes vary so that records straddle bufio's buffer.
				body := bytes.Repeat([]byte{byte(g)}, 14+(i*97)%3000)
				w.WriteFrame(fmt.Appendf(nil, "%d/%d:", g, i), body)
			}
		})
	}
	// Flushes run alongside the writers too.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			w.Flush()
		}
	}()
	wg.Wait()
	<-done
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadAll(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != writers*frames {
		t.Fatalf("%d records, want %d", len(recs), writers*frames)
	}
	next := make([]int, writers) // each writer's frames stay in its order
	for n, r := range recs {
		var g, i int
		if _, err := fmt.Sscanf(string(r.Data), "%d/%d:", &g, &i); err != nil || g < 0 || g >= writers {
			t.Fatalf("record %d: %q...: not a frame of the test", n, r.Data[:min(len(r.Data), 16)])
		}
		prefix := fmt.Sprintf("%d/%d:", g, i)
		want := append([]byte(prefix), bytes.Repeat([]byte{byte(g)}, 14+(i*97)%3000)...)
		if !bytes.Equal(r.Data, want) {
			t.Fatalf("record %d (%s) is not the frame written", n, prefix)
		}
		if i != next[g] {
			t.Fatalf("record %d: writer %d's frame %d, want %d", n, g, i, next[g])
		}
		next[g]++
	}
}

// TestFlushTimer: a frame reaches the file without Close, so that a
// capture can be read while it runs.
func TestFlushTimer(t *testing.T) {
	var buf syncBuffer
	w, err := NewWriter(&buf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.WriteFrame([]byte("a small frame"))
	deadline := time.Now().Add(FlushInterval + 5*time.Second)
	for len(buf.Bytes()) == FileHeaderLen {
		if time.Now().After(deadline) {
			t.Fatalf("the frame was not flushed %v after it was written", FlushInterval+5*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	recs, err := ReadAll(bytes.NewReader(buf.Bytes()))
	if err != nil || len(recs) != 1 || string(recs[0].Data) != "a small frame" {
		t.Fatalf("ReadAll = %d records, %v; want the frame", len(recs), err)
	}
}

// failingWriter takes ok bytes, then fails every write.
type failingWriter struct {
	mu     sync.Mutex
	ok     int
	n      int // bytes taken
	writes int // calls after the first failure
	failed bool
}

var errDiskFull = errors.New("no space left on device")

func (f *failingWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed {
		f.writes++
		return 0, errDiskFull
	}
	if f.n+len(p) > f.ok {
		k := f.ok - f.n
		f.n = f.ok
		f.failed = true
		return k, errDiskFull
	}
	f.n += len(p)
	return len(p), nil
}

// TestWriteErrorStopsCapture: a full disk stops the capture with one log
// line; the writers go on as if nothing happened.
func TestWriteErrorStopsCapture(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ok    int
		frame int
		flush bool // the error comes from a flush, not from a write
	}{
		{"write", 100 << 10, 70 << 10, false},
		{"flush", FileHeaderLen + 10, 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw := &failingWriter{ok: tc.ok}
			var logs []string
			var logMu sync.Mutex
			w, err := NewWriter(fw, func(f string, a ...any) {
				logMu.Lock()
				defer logMu.Unlock()
				logs = append(logs, fmt.Sprintf(f, a...))
			})
			if err != nil {
				t.Fatal(err)
			}
			frame := make([]byte, tc.frame)
			for range 20 {
				w.WriteFrame(frame[:14], frame[14:])
			}
			if tc.flush {
				if err := w.Flush(); !errors.Is(err, errDiskFull) {
					t.Fatalf("Flush = %v, want %v", err, errDiskFull)
				}
			}
			for range 20 {
				w.WriteFrame(frame)
			}
			if err := w.Close(); !errors.Is(err, errDiskFull) {
				t.Errorf("Close = %v, want %v", err, errDiskFull)
			}
			fw.mu.Lock()
			defer fw.mu.Unlock()
			if fw.writes != 0 {
				t.Errorf("%d writes after the first failure, want none", fw.writes)
			}
			logMu.Lock()
			defer logMu.Unlock()
			if len(logs) != 1 {
				t.Errorf("logged %q, want one line", logs)
			}
		})
	}
}

func TestHeaderWriteError(t *testing.T) {
	if _, err := NewWriter(&failingWriter{ok: 3}, nil); !errors.Is(err, errDiskFull) {
		t.Fatalf("NewWriter = %v, want %v", err, errDiskFull)
	}
}

// TestNoAllocs: recording a frame allocates nothing.
func TestNoAllocs(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	head, body := make([]byte, 128), make([]byte, 1400)
	parts := [][]byte{head, body}
	if n := testing.AllocsPerRun(100, func() {
		w.WriteFrame(parts...)
		buf.Reset()
	}); n != 0 {
		t.Errorf("WriteFrame: %v allocations per frame, want 0", n)
	}
}
