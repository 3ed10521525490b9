package main

import (
	"fmt"
	"os"

	"github.com/usernet/usernet/link"
	"github.com/usernet/usernet/pcap"
)

// --pcap (pasta's -p/--pcap): every frame of the tap, both ways, to a
// pcap file. prepare opens the file, so that it is made with the host's
// view of the filesystem and passes into the sandbox as an fd; run writes
// it.

// openPcap creates (or truncates) the capture file; nil for "".
func openPcap(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--pcap: %w", err)
	}
	return f, nil
}

// startCapture writes the pcap header to f and returns the capture for
// stack.Config and what ends it (flushes; the file stays p's to close).
// Without f, both are no-ops: a nil *pcap.Writer must not become a
// non-nil link.Capture.
func startCapture(f *os.File, logf func(string, ...any)) (link.Capture, func(), error) {
	if f == nil {
		return nil, func() {}, nil
	}
	w, err := pcap.NewWriter(f, logf)
	if err != nil {
		return nil, nil, fmt.Errorf("--pcap %s: %w", f.Name(), err)
	}
	return w, func() { w.Close() }, nil
}
