package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/internal/testutil"
)

// tcpPair returns both ends of a loopback TCP connection; cleanup closes
// them.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	for _, c := range []net.Conn{d, a} {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		t.Cleanup(func() { c.Close() })
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// relayed is a Run between two loopback connections: the test plays their
// peers, left and right.
type relayed struct {
	left, right *net.TCPConn // the peers
	a, b        *net.TCPConn // the conns Run relays
	cancel      context.CancelFunc
	done        chan struct{}
}

// startRun starts Run(ctx, a, b) where left is a's peer and right b's;
// cleanup cancels it and waits for it. polled: a and b are relayed as
// PolledConns of a Poller (no goroutine while idle).
func startRun(t *testing.T, polled bool) *relayed {
	t.Helper()
	testutil.CheckNoLeaks(t)
	r := &relayed{done: make(chan struct{})}
	r.left, r.a = tcpPair(t)
	r.b, r.right = tcpPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	var a, b net.Conn = r.a, r.b
	if polled {
		p := startPoller(t)
		a, b = polledConn(t, p, r.a), polledConn(t, p, r.b)
	}
	go func() {
		defer close(r.done)
		Run(ctx, a, b)
	}()
	t.Cleanup(func() {
		cancel()
		r.wait(t)
	})
	return r
}

// startPoller starts a Poller; cleanup stops and closes it.
func startPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Poller.Run: %v", err)
		}
		p.Close()
	})
	return p
}

func polledConn(t *testing.T, p *Poller, c *net.TCPConn) *PolledConn {
	t.Helper()
	pc, err := p.Conn(c)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// bothModes runs f with plain conns and with PolledConns.
func bothModes(t *testing.T, f func(t *testing.T, polled bool)) {
	t.Run("plain", func(t *testing.T) { f(t, false) })
	t.Run("polled", func(t *testing.T) { f(t, true) })
}

// wait waits for Run to return.
func (r *relayed) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

// checkClosed fails unless Run closed both of its conns.
func (r *relayed) checkClosed(t *testing.T) {
	t.Helper()
	for _, c := range []*net.TCPConn{r.a, r.b} {
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("write to a relayed conn after Run: %v; want net.ErrClosed", err)
		}
	}
}

// readReset reads c to its end and fails unless that end is a reset.
func readReset(t *testing.T, name string, c net.Conn) {
	t.Helper()
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("%s: read to the end = %v; want ECONNRESET (a reset, not a FIN)", name, err)
	}
}

func TestRunCopiesBothWaysWithHalfClose(t *testing.T) {
	bothModes(t, func(t *testing.T, polled bool) {
		// Either side may finish first; the other direction must go on.
		for _, leftFirst := range []bool{true, false} {
			name := "right half-closes first"
			if leftFirst {
				name = "left half-closes first"
			}
			t.Run(name, func(t *testing.T) {
				r := startRun(t, polled)
				first, second := r.right, r.left
				if leftFirst {
					first, second = r.left, r.right
				}
				// More than the small buffer each way.
				ask, answer := make([]byte, 1<<20), make([]byte, 1<<20+1)
				rand.Read(ask)
				rand.Read(answer)

				var wg sync.WaitGroup
				var gotAsk []byte
				var askErr error
				wg.Go(func() {
					first.Write(ask)
					first.CloseWrite()
				})
				wg.Go(func() {
					// second sees first's half-close as EOF, and
					// answers after it.
					gotAsk, askErr = io.ReadAll(second)
					second.Write(answer)
					second.CloseWrite()
				})
				gotAnswer, answerErr := io.ReadAll(first)
				wg.Wait()
				if askErr != nil || !bytes.Equal(gotAsk, ask) {
					t.Errorf("first → second: %d bytes, %v; want the %d bytes sent, then EOF", len(gotAsk), askErr, len(ask))
				}
				if answerErr != nil || !bytes.Equal(gotAnswer, answer) {
					t.Errorf("second → first: %d bytes, %v; want the %d bytes sent, then EOF", len(gotAnswer), answerErr, len(answer))
				}
				r.wait(t) // both directions done: Run returns by itself
				r.checkClosed(t)
			})
		}
	})
}

func TestRunPassesResetOn(t *testing.T) {
	bothModes(t, func(t *testing.T, polled bool) {
		for _, resetLeft := range []bool{true, false} {
			name := "right resets"
			if resetLeft {
				name = "left resets"
			}
			t.Run(name, func(t *testing.T) {
				r := startRun(t, polled)
				resetter, other := r.right, r.left
				if resetLeft {
					resetter, other = r.left, r.right
				}
				// Data in flight first: the other side must get it and
				// then the reset, not a clean end of a short stream.
				if _, err := resetter.Write([]byte("partial")); err != nil {
					t.Fatalf("write: %v", err)
				}
				buf := make([]byte, len("partial"))
				if _, err := io.ReadFull(other, buf); err != nil {
					t.Fatalf("read the data before the reset: %v", err)
				}
				resetter.SetLinger(0)
				resetter.Close()
				readReset(t, "the other peer", other)
				r.wait(t)
				r.checkClosed(t)
			})
		}
	})
}

func TestRunAbortsBothWhenContextEnds(t *testing.T) {
	bothModes(t, func(t *testing.T, polled bool) {
		t.Run("both open", func(t *testing.T) {
			r := startRun(t, polled)
			r.cancel()
			readReset(t, "left", r.left)
			readReset(t, "right", r.right)
			r.wait(t)
			r.checkClosed(t)
		})
		t.Run("one way half-closed", func(t *testing.T) {
			r := startRun(t, polled)
			r.left.CloseWrite()
			if n, err := r.right.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("right after left's half-close: %d, %v; want EOF", n, err)
			}
			r.cancel()
			// right has read its end already; left, still reading, must
			// see the reset.
			readReset(t, "left", r.left)
			r.wait(t)
			r.checkClosed(t)
		})
	})
}

// plainConn records the calls of its closing methods; it has Close only.
type plainConn struct {
	net.Conn
	calls []string
}

func (c *plainConn) Close() error     { c.calls = append(c.calls, "Close"); return nil }
func (c *plainConn) record() []string { return c.calls }

// lingerConn also has SetLinger, as *net.TCPConn.
type lingerConn struct{ plainConn }

func (c *lingerConn) SetLinger(int) error { c.calls = append(c.calls, "SetLinger"); return nil }

// abortConn also has Abort, which Abort must use alone.
type abortConn struct{ lingerConn }

func (c *abortConn) Abort() { c.calls = append(c.calls, "Abort") }

func TestAbort(t *testing.T) {
	testutil.CheckNoLeaks(t)
	// A real *net.TCPConn: its peer sees a reset.
	c, peer := tcpPair(t)
	Abort(c)
	readReset(t, "peer of an aborted *net.TCPConn", peer)

	for _, tt := range []struct {
		name string
		c    interface {
			net.Conn
			record() []string
		}
		want []string
	}{
		{"an Aborter", &abortConn{}, []string{"Abort"}},
		{"a conn with SetLinger", &lingerConn{}, []string{"SetLinger", "Close"}},
		{"a conn with neither", &plainConn{}, []string{"Close"}},
	} {
		Abort(tt.c)
		if got := tt.c.record(); !slices.Equal(got, tt.want) {
			t.Errorf("Abort(%s) called %v; want %v", tt.name, got, tt.want)
		}
	}
}

// sizeReader records the size of each buffer it is asked to read into
// and fills it per fill: a full read, or fewer bytes.
type sizeReader struct {
	fill  []bool // per Read: fill the buffer; past the end, EOF
	sizes []int
}

func (r *sizeReader) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	if len(r.sizes) > len(r.fill) {
		return 0, io.EOF
	}
	if r.fill[len(r.sizes)-1] {
		return len(p), nil
	}
	return 1, nil
}

func TestCopyTakesLargeBufferOnlyAfterAFullRead(t *testing.T) {
	for _, tt := range []struct {
		name string
		fill []bool
		want []int
	}{
		{"idle or interactive: small reads keep the small buffer",
			[]bool{false, false, false}, []int{smallBufSize, smallBufSize, smallBufSize, smallBufSize}},
		{"bulk: a full read moves to the large buffer",
			[]bool{false, true, true, false}, []int{smallBufSize, smallBufSize, largeBufSize, largeBufSize, largeBufSize}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &sizeReader{fill: tt.fill}
			if err := copyHalf(io.Discard, r, nil); err != nil {
				t.Fatalf("copyHalf: %v", err)
			}
			if !slices.Equal(r.sizes, tt.want) {
				t.Errorf("read buffer sizes = %v; want %v", r.sizes, tt.want)
			}
		})
	}
}

// TestIdleHoldsNoBuffer: once a connection has gone quiet, neither
// direction holds a copy buffer, and the connection still works after.
func TestIdleHoldsNoBuffer(t *testing.T) {
	bothModes(t, func(t *testing.T, polled bool) {
		r := startRun(t, polled)
		for i := range 2 {
			if _, err := r.left.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 4)
			if _, err := io.ReadFull(r.right, b); err != nil || string(b) != "ping" {
				t.Fatalf("exchange %d: %q, %v", i, b, err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for buffersHeld.Load() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("exchange %d: %d copy buffers held by an idle connection, want 0", i, buffersHeld.Load())
				}
				time.Sleep(time.Millisecond)
			}
		}
	})
}

// deepConn is a TCP conn that says its writes run deep, and records the
// goroutine that asked it to get ready (by its stack) and what it wrote
// on it since.
type deepConn struct {
	*net.TCPConn
	mu    sync.Mutex
	grown []string
}

func (c *deepConn) GrowStack() {
	buf := make([]byte, 4096)
	c.mu.Lock()
	c.grown = append(c.grown, string(buf[:runtime.Stack(buf, false)]))
	c.mu.Unlock()
}

// TestRunGrowsDeepWritersStack: the goroutine that writes to a
// DeepWriter calls its GrowStack once, before copying; a DeepWriter only
// read from is not asked.
func TestRunGrowsDeepWritersStack(t *testing.T) {
	testutil.CheckNoLeaks(t)
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	deepA := &deepConn{TCPConn: a}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(context.Background(), deepA, b)
	}()
	if _, err := right.Write([]byte("to a")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(left, got); err != nil {
		t.Fatalf("read through the relay: %v", err)
	}
	left.Close()
	right.Close()
	<-done
	deepA.mu.Lock()
	defer deepA.mu.Unlock()
	if len(deepA.grown) != 1 {
		t.Fatalf("GrowStack called %d times on the conn written to, want 1", len(deepA.grown))
	}
	if !strings.Contains(deepA.grown[0], "relay.(*half).run(") {
		t.Errorf("GrowStack not called from the copy's goroutine:\n%s", deepA.grown[0])
	}
}

// TestIdlePolledRelaysHaveNoGoroutines: relays of PolledConns hold no
// goroutine while idle (the Poller's one serves all), and still pass on
// data, a half-close and a reset that come after a while idle.
func TestIdlePolledRelaysHaveNoGoroutines(t *testing.T) {
	testutil.CheckNoLeaks(t)
	const n = 100
	p := startPoller(t)
	type pair struct{ left, right *net.TCPConn }
	pairs := make([]pair, n)
	var wg sync.WaitGroup
	before := runtime.NumGoroutine()
	for i := range pairs {
		left, a := tcpPair(t)
		b, right := tcpPair(t)
		pairs[i] = pair{left, right}
		wg.Add(1)
		Go(context.Background(), polledConn(t, p, a), polledConn(t, p, b), nil, nil, wg.Done)
	}
	// A first exchange each way, then idle.
	for i, c := range pairs {
		exchange(t, i, c.left, c.right)
		exchange(t, i, c.right, c.left)
	}
	var grown int
	for deadline := time.Now().Add(5 * time.Second); ; {
		grown = runtime.NumGoroutine() - before
		if grown < n/10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if grown >= n/10 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d idle relays: %d more goroutines, want almost none:\n%s", n, grown, buf[:runtime.Stack(buf, true)])
	}
	time.Sleep(100 * time.Millisecond)
	for i, c := range pairs {
		exchange(t, i, c.right, c.left)
		exchange(t, i, c.left, c.right)
		switch i % 3 {
		case 0: // half-closes both ways
			c.left.CloseWrite()
			if n, err := c.right.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("relay %d: right after left's half-close: %d, %v; want EOF", i, n, err)
			}
			c.right.CloseWrite()
			if n, err := c.left.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("relay %d: left after right's half-close: %d, %v; want EOF", i, n, err)
			}
		case 1:
			c.left.SetLinger(0)
			c.left.Close()
			readReset(t, "right", c.right)
		case 2:
			c.right.SetLinger(0)
			c.right.Close()
			readReset(t, "left", c.left)
		}
	}
	wg.Wait()
}

// exchange writes a few bytes to from and reads them at to.
func exchange(t *testing.T, i int, from, to *net.TCPConn) {
	t.Helper()
	if _, err := from.Write([]byte("ping")); err != nil {
		t.Fatalf("relay %d: write: %v", i, err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(to, b); err != nil || string(b) != "ping" {
		t.Fatalf("relay %d: read %q, %v; want ping", i, b, err)
	}
}

// TestRelayOutlivesFailedPoller: if the Poller's Run fails, its conns'
// relays go on (waiting on their goroutines).
func TestRelayOutlivesFailedPoller(t *testing.T) {
	testutil.CheckNoLeaks(t)
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	left, a := tcpPair(t)
	b, right := tcpPair(t)
	done := make(chan struct{})
	Go(context.Background(), polledConn(t, p, a), polledConn(t, p, b), nil, nil, func() { close(done) })
	exchange(t, 0, left, right)
	time.Sleep(3 * parkFor) // idle: armed in the epoll instance
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	p.Close()
	if err := p.Run(context.Background()); err == nil {
		t.Fatal("Run on a closed Poller: nil error")
	}
	for i := range 3 {
		exchange(t, i, right, left)
		exchange(t, i, left, right)
		time.Sleep(3 * parkFor)
	}
	left.CloseWrite()
	right.CloseWrite()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
}
