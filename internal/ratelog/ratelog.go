// Package ratelog keeps log lines that a guest or the network can trigger
// (one per DHCP lease, per failed flow, per dropped datagram) from costing
// the data path: Logger.Logf never blocks and never writes, a goroutine of
// the Logger does, at a bounded rate, and the lines beyond the rate are
// counted and reported as one summary line. Every lets one line of a kind
// through per interval, for callers that want a kind of line not to crowd
// out the others.
package ratelog

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Logger writes lines through a write function on its own goroutine. Its
// owner calls Close, which writes what is queued and stops the goroutine.
type Logger struct {
	write    func(line string)
	rate     float64 // lines per second, on average
	burst    float64 // lines at once
	interval time.Duration

	lines  chan string
	kick   chan struct{} // lines were suppressed: a summary is due
	closed chan struct{}
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	tokens float64   // guarded by mu
	last   time.Time // guarded by mu; when tokens was last refilled
	after  bool      // guarded by mu; Close has run: write inline

	suppressed atomic.Uint64
}

// queueLen is how many lines may wait for the writer.
const queueLen = 256

// New starts a Logger that lets burst lines through at once and rate lines
// per second after that, and reports suppressed lines at most once per
// interval.
func New(write func(line string), rate float64, burst int, interval time.Duration) *Logger {
	l := &Logger{
		write:    write,
		rate:     rate,
		burst:    float64(burst),
		interval: interval,
		lines:    make(chan string, queueLen),
		kick:     make(chan struct{}, 1),
		closed:   make(chan struct{}),
		done:     make(chan struct{}),
		tokens:   float64(burst),
		last:     time.Now(),
	}
	go l.run()
	return l
}

// Logf formats a line and queues it, or counts it if it is over the rate
// or the queue is full. It never blocks on the writer. After Close it
// writes the line itself (still rate-limited).
func (l *Logger) Logf(format string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	ok := l.tokens >= 1
	if ok {
		l.tokens--
	}
	after := l.after
	l.mu.Unlock()
	if !ok {
		l.suppress()
		return
	}
	line := fmt.Sprintf(format, args...)
	if after {
		l.write(line)
		return
	}
	select {
	case l.lines <- line:
	default:
		l.suppress()
	}
}

func (l *Logger) suppress() {
	l.suppressed.Add(1)
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Suppressed returns how many lines have been suppressed and not yet
// reported.
func (l *Logger) Suppressed() uint64 { return l.suppressed.Load() }

// run writes the queued lines, and a summary of the suppressed ones an
// interval after the first of them.
func (l *Logger) run() {
	defer close(l.done)
	var summary <-chan time.Time
	for {
		select {
		case line := <-l.lines:
			l.write(line)
		case <-l.kick:
			if summary == nil {
				summary = time.After(l.interval)
			}
		case <-summary:
			summary = nil
			l.summarise()
		case <-l.closed:
			for {
				select {
				case line := <-l.lines:
					l.write(line)
				default:
					l.summarise()
					return
				}
			}
		}
	}
}

func (l *Logger) summarise() {
	if n := l.suppressed.Swap(0); n > 0 {
		l.write(fmt.Sprintf("%d log lines suppressed (more than %g a second)", n, l.rate))
	}
}

// Close writes what is queued and the summary, and stops the goroutine.
// Lines logged after Close are written by the caller.
func (l *Logger) Close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.after = true
		l.mu.Unlock()
		close(l.closed)
	})
	<-l.done
}

// Every lets one event through per interval; the zero value is ready.
type Every struct {
	next atomic.Int64 // unix nanoseconds before which events are refused
}

// Allow reports whether an event may go through now, and if so starts a
// new interval.
func (e *Every) Allow(interval time.Duration) bool {
	now := time.Now().UnixNano()
	n := e.next.Load()
	return now >= n && e.next.CompareAndSwap(n, now+int64(interval))
}
