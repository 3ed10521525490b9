// Package autofwd forwards the ports a namespace listens on, as pasta's
// "auto" mode does (rootlesskit's implicit port driver depends on it): it
// reads the namespace's /proc/net/tcp, tcp6, udp and udp6 once a second
// and keeps one forward per listening port and host address, added when
// a port starts listening and removed when it stops.
//
// It owns its scanning goroutine (Run) and the forwards it added, which it
// removes when Run returns; the files are the caller's. It may import
// portfwd (for the Rule type) and nothing else of usernet, never gVisor.
package autofwd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/usernet/usernet/portfwd"
)

// Forwarder is what autofwd adds forwards to: a *portfwd.Registry.
type Forwarder interface {
	Add(ctx context.Context, r portfwd.Rule) (int, error)
	Remove(id int) error
}

// Config says what to forward.
type Config struct {
	// TCP and UDP turn auto forwarding on for each protocol. As in
	// pasta, UDP also forwards the port numbers TCP listens on when both
	// are on (DNS and other services listen on both).
	TCP, UDP bool
	// TCP4, TCP6, UDP4, UDP6 are the namespace's /proc/net files, opened
	// inside it; a nil one is not read.
	TCP4, TCP6, UDP4, UDP6 io.ReaderAt
	// Hosts are the host addresses each port is forwarded from (0.0.0.0,
	// and :: when the namespace has IPv6).
	Hosts []netip.Addr
	// Skip are ports never forwarded (the forwards given explicitly).
	Skip func(proto string, port uint16) bool
	// Interval between scans; 0 means a second, as pasta.
	Interval  time.Duration
	Forwarder Forwarder
	Logf      func(format string, args ...any)
}

// Socket states in /proc/net/{tcp,udp}: TCP_LISTEN, and TCP_CLOSE, which a
// bound UDP socket shows.
const (
	stateListen = 0x0a
	stateClose  = 0x07
)

// Run scans until ctx ends, then removes every forward it added.
func Run(ctx context.Context, cfg Config) error {
	interval := cfg.Interval
	if interval <= 0 {
		interval = time.Second
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	type key struct {
		proto string
		port  uint16
	}
	active := map[key][]int{} // forward IDs
	failed := map[key]bool{}  // logged once; retried at every scan
	defer func() {
		for _, ids := range active {
			for _, id := range ids {
				cfg.Forwarder.Remove(id)
			}
		}
	}()
	buf := make([]byte, 0, 64<<10)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var tcp, udp []uint16
		var err error
		if cfg.TCP || cfg.UDP {
			if tcp, buf, err = listening(buf, stateListen, cfg.TCP4, cfg.TCP6); err != nil {
				return err
			}
		}
		if cfg.UDP {
			if udp, buf, err = listening(buf, stateClose, cfg.UDP4, cfg.UDP6); err != nil {
				return err
			}
			if cfg.TCP {
				udp = union(udp, tcp)
			}
		}
		if !cfg.TCP {
			tcp = nil
		}
		want := map[key]bool{}
		for _, p := range tcp {
			want[key{"tcp", p}] = true
		}
		for _, p := range udp {
			want[key{"udp", p}] = true
		}
		for k, ids := range active {
			if !want[k] {
				for _, id := range ids {
					cfg.Forwarder.Remove(id)
				}
				delete(active, k)
			}
		}
		for k := range want {
			if _, ok := active[k]; ok || (cfg.Skip != nil && cfg.Skip(k.proto, k.port)) {
				continue
			}
			var ids []int
			var errs []error
			for _, h := range cfg.Hosts {
				id, err := cfg.Forwarder.Add(ctx, portfwd.Rule{Proto: k.proto, HostAddr: h, HostPort: k.port, GuestPort: k.port})
				if err != nil {
					errs = append(errs, err)
					continue
				}
				ids = append(ids, id)
			}
			if len(ids) > 0 {
				active[k] = ids
				delete(failed, k)
			} else if !failed[k] && ctx.Err() == nil {
				// A privileged port, or one the host uses itself.
				logf("auto forwarding of %s port %d: %v", k.proto, k.port, errs)
				failed[k] = true
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// listening reads the files and returns the sorted local ports of the
// sockets in state, reusing buf.
func listening(buf []byte, state int, files ...io.ReaderAt) ([]uint16, []byte, error) {
	var ports []uint16
	for _, f := range files {
		if f == nil {
			continue
		}
		var err error
		if buf, err = readAll(buf[:0], f); err != nil {
			return nil, buf, fmt.Errorf("read the namespace's sockets: %w", err)
		}
		ports = union(ports, ParseProcNet(buf, state))
	}
	return ports, buf, nil
}

// readAll reads f from its start (pread: /proc/net files regenerate).
func readAll(buf []byte, f io.ReaderAt) ([]byte, error) {
	var off int64
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := f.ReadAt(buf[len(buf):cap(buf)], off)
		buf = buf[:len(buf)+n]
		off += int64(n)
		if err == io.EOF || (err == nil && n == 0) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// ParseProcNet returns the sorted, distinct local ports of the sockets in
// state listed in the text of a /proc/net/{tcp,tcp6,udp,udp6} file:
// "  sl  local_address rem_address   st ...", addresses as HEXADDR:HEXPORT.
func ParseProcNet(text []byte, state int) []uint16 {
	var ports []uint16
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 512), 4096)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 4 {
			continue
		}
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if err != nil || int(st) != state {
			continue
		}
		i := bytes.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(string(f[1][i+1:]), 16, 16)
		if err != nil || p == 0 {
			continue
		}
		ports = append(ports, uint16(p))
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// union merges two sorted port lists.
func union(a, b []uint16) []uint16 {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}
