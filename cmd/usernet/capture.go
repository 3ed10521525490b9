package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/usernet/usernet/link"
	"github.com/usernet/usernet/pcap"
)

// captureHub is the tap's capture: it hands every frame to the captures
// running now (--pcap's file, and live streams over the API). With none,
// it is not installed, and the data path pays nothing for it.
type captureHub struct {
	set  func(link.Capture) // the stack's SetCapture
	logf func(string, ...any)
	// files are the captures start_capture made, by id; sandboxed: no file
	// can be created, and Start says so.
	sandboxed bool

	mu     sync.Mutex
	list   []link.Capture                 // guarded by mu
	cur    atomic.Pointer[[]link.Capture] // list, for WriteFrame
	files  map[int]*fileCapture           // guarded by mu
	nextID int                            // guarded by mu
}

// fileCapture is one start_capture's file.
type fileCapture struct {
	f    *os.File
	w    *pcap.Writer
	stop func()
}

// maxFileCaptures bounds start_capture's files at once.
const maxFileCaptures = 8

// Start is apisock.Capturer's: a new file at path (which must not exist)
// gets every frame until Stop.
func (h *captureHub) Start(path string) (int, error) {
	if h.sandboxed {
		return 0, errors.New("the sandbox lets usernet create no file; stream the capture over the API socket instead (usernet capture)")
	}
	h.mu.Lock()
	n := len(h.files)
	h.mu.Unlock()
	if n >= maxFileCaptures {
		return 0, fmt.Errorf("%d captures are running already", n)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	w, err := pcap.NewWriter(f, h.logf)
	if err != nil {
		f.Close()
		os.Remove(path)
		return 0, err
	}
	fc := &fileCapture{f: f, w: w}
	fc.stop = h.add(w)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.files == nil {
		h.files = map[int]*fileCapture{}
	}
	h.nextID++
	h.files[h.nextID] = fc
	return h.nextID, nil
}

// Stop ends start_capture id's capture and closes its file.
func (h *captureHub) Stop(id int) error {
	h.mu.Lock()
	fc := h.files[id]
	delete(h.files, id)
	h.mu.Unlock()
	if fc == nil {
		return fmt.Errorf("no capture with id %d", id)
	}
	fc.stop()
	werr := fc.w.Close()
	if err := fc.f.Close(); werr == nil {
		werr = err
	}
	return werr
}

// stopAll ends every start_capture capture (usernet is stopping).
func (h *captureHub) stopAll() {
	h.mu.Lock()
	ids := make([]int, 0, len(h.files))
	for id := range h.files {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	for _, id := range ids {
		h.Stop(id)
	}
}

// WriteFrame is link.Capture.
func (h *captureHub) WriteFrame(parts ...[]byte) {
	if l := h.cur.Load(); l != nil {
		for _, c := range *l {
			c.WriteFrame(parts...)
		}
	}
}

// add starts c; the returned func stops it.
func (h *captureHub) add(c link.Capture) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.list = append(append([]link.Capture(nil), h.list...), c)
	h.publishLocked()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		var l []link.Capture
		for _, x := range h.list {
			if x != c {
				l = append(l, x)
			}
		}
		h.list = l
		h.publishLocked()
	}
}

func (h *captureHub) publishLocked() {
	l := h.list
	h.cur.Store(&l)
	if len(l) == 0 {
		h.set(nil)
	} else {
		h.set(h)
	}
}

// streamQueueMax bounds what a live capture may have waiting for a slow
// reader; beyond it the capture ends rather than stall the data path.
const streamQueueMax = 8 << 20

var errCaptureTooSlow = errors.New("the capture's reader fell more than 8 MiB behind; capture stopped")

// Stream is apisock.Capturer: a pcap stream of every frame to w, from a
// queue the data path fills without ever waiting.
func (h *captureHub) Stream(ctx context.Context, w io.Writer) error {
	q := &byteQueue{max: streamQueueMax, ready: make(chan struct{}, 1)}
	pw, err := pcap.NewWriter(q, nil)
	if err != nil {
		return err
	}
	stop := h.add(pw)
	defer func() {
		stop()
		pw.Close()
	}()
	for {
		chunk, err := q.next(ctx)
		if err != nil {
			return err
		}
		if _, err := w.Write(chunk); err != nil {
			return err
		}
	}
}

// byteQueue is an unbounded-looking, bounded writer: Write appends and
// never blocks; past max it fails, and so ends the pcap.Writer's capture.
type byteQueue struct {
	max   int
	ready chan struct{} // a token when data or failure is waiting

	mu     sync.Mutex
	buf    []byte // guarded by mu
	failed bool   // guarded by mu
}

func (q *byteQueue) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.failed || len(q.buf)+len(p) > q.max {
		q.failed = true
		q.signal()
		return 0, errCaptureTooSlow
	}
	q.buf = append(q.buf, p...)
	q.signal()
	return len(p), nil
}

func (q *byteQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// next waits for queued bytes and takes them all.
func (q *byteQueue) next(ctx context.Context) ([]byte, error) {
	for {
		q.mu.Lock()
		buf, failed := q.buf, q.failed
		q.buf = nil
		q.mu.Unlock()
		if len(buf) > 0 {
			return buf, nil
		}
		if failed {
			return nil, errCaptureTooSlow
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// captureMain is `usernet capture --api-socket PATH [-w FILE]`: a live
// pcap of a running usernet's tap, to FILE or stdout (for tcpdump -r -),
// until interrupted.
func captureMain(argv []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("usernet capture", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.StringP("api-socket", "a", "", "the API socket of the usernet to capture (required)")
	file := fs.StringP("write", "w", "-", "the pcap file to write, - for stdout")
	dur := fs.Duration("duration", 0, "stop after this long (default: until interrupted)")
	if err := fs.Parse(argv); err != nil {
		return 2
	}
	if *sock == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: usernet capture --api-socket PATH [-w FILE] [--duration D]")
		return 2
	}
	out := stdout
	if *file != "-" {
		f, err := os.OpenFile(*file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "usernet capture: %v\n", err)
			return 1
		}
		defer f.Close()
		out = f
	}
	c, err := net.DialTimeout("unix", *sock, 5*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "usernet capture: %v\n", err)
		return 1
	}
	defer c.Close()
	if *dur > 0 {
		c.SetReadDeadline(time.Now().Add(*dur))
	}
	if err := readCapture(c, out); err != nil {
		fmt.Fprintf(stderr, "usernet capture: %v\n", err)
		return 1
	}
	return 0
}

// readCapture sends the request on c, checks the reply and copies the
// stream that follows to out until c ends (or its deadline: a normal end).
func readCapture(c net.Conn, out io.Writer) error {
	if _, err := io.WriteString(c, `{"execute":"capture"}`); err != nil {
		return err
	}
	// The reply is exactly replyEmpty unless it is an error, which ends
	// the connection: read what a reply can be, byte by byte.
	const ok = `{"return":{}}`
	head := make([]byte, len(ok))
	if _, err := io.ReadFull(c, head); err != nil {
		return fmt.Errorf("no capture from this API socket (slirp4netns, or an older usernet?): %v", err)
	}
	if string(head) != ok {
		rest, _ := io.ReadAll(io.LimitReader(c, 4096))
		return fmt.Errorf("capture refused: %s%s", head, rest)
	}
	_, err := io.Copy(out, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}
