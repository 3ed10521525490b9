// Package pcap writes frames in the classic libpcap file format
// (tcpdump, Wireshark): a file header, then one record per frame with its
// time. It is what --pcap (slirp4netns's command line) and -p/--pcap
// (pasta's) write.
//
// It knows bytes, not packets: it must not import gVisor or the rest of
// usernet.
package pcap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"
)

const (
	// Magic is the classic format's magic number (microsecond
	// timestamps), written in the writer's byte order: little-endian here.
	Magic = 0xa1b2c3d4
	// VersionMajor and VersionMinor are the format's version, 2.4.
	VersionMajor = 2
	VersionMinor = 4
	// SnapLen is the largest frame recorded whole. With virtio-net
	// offloads a frame is a TCP segment of up to 64 KiB; 262144 is what
	// tcpdump uses and covers it, so no frame is ever cut.
	SnapLen = 262144
	// LinkTypeEthernet is LINKTYPE_ETHERNET: every record is an Ethernet
	// frame.
	LinkTypeEthernet = 1

	// FileHeaderLen and RecordHeaderLen are the sizes of the headers.
	FileHeaderLen   = 24
	RecordHeaderLen = 16
)

// FlushInterval bounds how long a frame stays in the buffer: a capture can
// be read (tcpdump -r, wireshark) while it is being written.
const FlushInterval = time.Second

// bufSize holds a few full-size TSO frames, so that bulk traffic costs one
// write(2) per few frames and not one per frame.
const bufSize = 256 << 10

// Writer writes frames to a pcap stream. It is safe for concurrent use:
// the tap's reader and its writers call WriteFrame from different
// goroutines, and each frame is one record.
//
// Writing must never stop the data path: the first write error (a full
// disk, ...) is logged and the capture stops there; later frames are
// dropped silently.
type Writer struct {
	logf func(string, ...any)
	now  func() time.Time // time.Now; tests set it

	mu     sync.Mutex
	bw     *bufio.Writer         // guarded by mu
	rec    [RecordHeaderLen]byte // guarded by mu; the record header, kept off the heap per frame
	timer  *time.Timer           // the pending flush, armed by the first frame after one
	armed  bool                  // guarded by mu: timer is running
	err    error                 // guarded by mu: the write error that stopped capturing
	closed bool                  // guarded by mu
}

// NewWriter writes the file header to w and returns a Writer for its
// records. logf (nil: discard) gets the one line that says capturing has
// stopped. The caller closes w, after Close.
func NewWriter(w io.Writer, logf func(string, ...any)) (*Writer, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var h [FileHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], Magic)
	binary.LittleEndian.PutUint16(h[4:], VersionMajor)
	binary.LittleEndian.PutUint16(h[6:], VersionMinor)
	// thiszone and sigfigs (h[8:16]) are 0: timestamps are UTC.
	binary.LittleEndian.PutUint32(h[16:], SnapLen)
	binary.LittleEndian.PutUint32(h[20:], LinkTypeEthernet)
	// Written through at once: a capture that cannot even start is an
	// error at start, not a line in the log later.
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap: write the file header: %w", err)
	}
	pw := &Writer{logf: logf, now: time.Now, bw: bufio.NewWriterSize(w, bufSize)}
	pw.timer = time.AfterFunc(time.Hour, pw.flushTimer)
	pw.timer.Stop()
	return pw, nil
}

// WriteFrame records one frame, the concatenation of parts (a frame
// written with writev is one record), stamped with the current time.
// Frames longer than SnapLen are cut there, with their length recorded.
func (w *Writer) WriteFrame(parts ...[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.err != nil {
		return
	}
	ts := w.now()
	incl := min(n, SnapLen)
	binary.LittleEndian.PutUint32(w.rec[0:], uint32(ts.Unix()))
	binary.LittleEndian.PutUint32(w.rec[4:], uint32(ts.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(w.rec[8:], uint32(incl))
	binary.LittleEndian.PutUint32(w.rec[12:], uint32(n))
	// bufio keeps the first error and returns it from every later write.
	_, err := w.bw.Write(w.rec[:])
	for _, p := range parts {
		if incl == 0 || err != nil {
			break
		}
		p = p[:min(len(p), incl)]
		_, err = w.bw.Write(p)
		incl -= len(p)
	}
	if err != nil {
		w.fail(err)
		return
	}
	if !w.armed {
		w.armed = true
		w.timer.Reset(FlushInterval)
	}
}

// fail stops capturing after err. Called with mu held.
func (w *Writer) fail(err error) {
	w.err = err
	w.timer.Stop()
	w.logf("pcap: capture stopped: %v", err)
}

// flushTimer writes out what is buffered, FlushInterval after the first
// frame since the last flush.
func (w *Writer) flushTimer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	w.flushLocked()
}

// Flush writes out what is buffered. It returns the error that stopped
// the capture, now or before.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.closed || w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.fail(err)
	}
	return w.err
}

// Close flushes what is buffered and stops the Writer: later frames are
// dropped. It does not close the underlying writer. It returns the error
// that stopped the capture, if one did.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.flushLocked()
	w.closed = true
	w.timer.Stop()
	return err
}
