package integration

// Helper modes of the TCP stress tests (stress_tcp_test.go); they run inside the target
// namespace, as its root.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["tcp-churn"] = helperTCPChurn
	helpers["tcp-blackhole"] = helperTCPBlackHole
	helpers["syn-flood"] = helperSYNFlood
	helpers["tcp-hold"] = helperTCPHold
}

// ChurnResult is what tcp-churn reports.
type ChurnResult struct {
	Conns  int            `json:"conns"`
	Errors map[string]int `json:"errors,omitempty"`
	Over1s int            `json:"over_1s"`
	Over3s int            `json:"over_3s"`
	MaxMS  float64        `json:"max_ms"`
}

// shortConn connects to addr, reads to the end (the server writes and closes first) and
// closes; it returns how long that took.
func shortConn(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, helperTimeout)
	if err != nil {
		return time.Since(start), &phaseError{"connect", err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(helperTimeout))
	if _, err := io.Copy(io.Discard, c); err != nil {
		return time.Since(start), &phaseError{"read", err}
	}
	return time.Since(start), nil
}

// helperTCPChurn makes N short connections to ADDR, CONC at a time. Usage: tcp-churn ADDR N CONC.
func helperTCPChurn(args []string) (any, error) {
	if err := argN(args, 3, "tcp-churn ADDR N CONC"); err != nil {
		return nil, err
	}
	n, err1 := strconv.Atoi(args[1])
	conc, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	res := ChurnResult{Errors: map[string]int{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				d, err := shortConn(args[0])
				mu.Lock()
				res.Conns++
				if err != nil {
					res.Errors[phaseErr(err)]++
				}
				if d > time.Second {
					res.Over1s++
				}
				if d > 3*time.Second {
					res.Over3s++
				}
				res.MaxMS = max(res.MaxMS, ms(d))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res, nil
}

// phaseError says whether a short connection failed connecting or reading.
type phaseError struct {
	phase string
	err   error
}

func (e *phaseError) Error() string { return e.phase + ": " + e.err.Error() }
func (e *phaseError) Unwrap() error { return e.err }

// phaseErr names err with its phase: "connect ECONNREFUSED", "read timeout".
func phaseErr(err error) string {
	var pe *phaseError
	if errors.As(err, &pe) {
		return pe.phase + " " + errName(pe.err)
	}
	return errName(err)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Probes is a series of short connections made while something else goes on.
type Probes struct {
	MS     []float64      `json:"ms"`
	Errors map[string]int `json:"errors,omitempty"`
}

// probe makes a short connection to addr every interval until stop closes.
func probe(addr string, interval time.Duration, stop <-chan struct{}) Probes {
	p := Probes{Errors: map[string]int{}}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		d, err := shortConn(addr)
		if err != nil {
			p.Errors[phaseErr(err)]++
		} else {
			p.MS = append(p.MS, ms(d))
		}
		select {
		case <-stop:
			return p
		case <-t.C:
		}
	}
}

// BlackHoleResult is what tcp-blackhole reports.
type BlackHoleResult struct {
	Started int    `json:"started"`
	Refused int    `json:"refused"` // connects answered with a RST
	Pending int    `json:"pending"` // still connecting at the end
	Other   int    `json:"other"`
	Probes  Probes `json:"probes"`
}

// helperTCPBlackHole starts N connects to HOLE (an address that never answers) at once, then
// probes PROBE every 200 ms for SECONDS, then looks at how the N ended. Usage: tcp-blackhole
// HOLE N PROBE SECONDS.
func helperTCPBlackHole(args []string) (any, error) {
	if err := argN(args, 4, "tcp-blackhole HOLE N PROBE SECONDS"); err != nil {
		return nil, err
	}
	hole, err1 := netip.ParseAddrPort(args[0])
	n, err2 := strconv.Atoi(args[1])
	secs, err3 := strconv.Atoi(args[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	res := BlackHoleResult{}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	sa := &unix.SockaddrInet4{Addr: hole.Addr().As4(), Port: int(hole.Port())}
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("socket %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
		if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
			return nil, fmt.Errorf("connect %d: %w", len(fds), err)
		}
		res.Started++
	}
	stop := make(chan struct{})
	time.AfterFunc(time.Duration(secs)*time.Second, func() { close(stop) })
	res.Probes = probe(args[2], 200*time.Millisecond, stop)
	for _, fd := range fds {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(pfd, 0); n == 0 {
			res.Pending++
			continue
		}
		switch e, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); unix.Errno(e) {
		case unix.ECONNREFUSED:
			res.Refused++
		default:
			res.Other++
		}
	}
	return res, nil
}

// FloodResult is what syn-flood reports.
type FloodResult struct {
	Sent   int    `json:"sent"`
	Probes Probes `json:"probes"`
}

// helperSYNFlood sends N SYNs from SRC (random ports and sequence numbers) to DST through a
// raw socket, at most RATE a second, while probing PROBE every 100 ms. The namespace's own
// answers to the SYN-ACKs are the caller's business (the test drops its RSTs). Usage:
// syn-flood SRC DST N RATE PROBE.
func helperSYNFlood(args []string) (any, error) {
	if err := argN(args, 5, "syn-flood SRC DST N RATE PROBE"); err != nil {
		return nil, err
	}
	src, err1 := netip.ParseAddr(args[0])
	dst, err2 := netip.ParseAddrPort(args[1])
	n, err3 := strconv.Atoi(args[2])
	rate, err4 := strconv.Atoi(args[3])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	stop := make(chan struct{})
	probed := make(chan Probes)
	go func() { probed <- probe(args[4], 100*time.Millisecond, stop) }()

	res := FloodResult{}
	sa := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	start := time.Now()
	for res.Sent < n {
		if ahead := time.Duration(res.Sent)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
		seg := synSegment(src, dst, uint16(1024+r.IntN(64000)), r.Uint32())
		if err := unix.Sendto(fd, seg, 0, sa); err != nil {
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				time.Sleep(time.Millisecond)
				continue
			}
			close(stop)
			<-probed
			return nil, fmt.Errorf("SYN %d: %w", res.Sent, err)
		}
		res.Sent++
	}
	time.Sleep(500 * time.Millisecond) // probes after the flood too
	close(stop)
	res.Probes = <-probed
	return res, nil
}

// synSegment is a TCP SYN (MSS option) from src:sport to dst, checksummed.
func synSegment(src netip.Addr, dst netip.AddrPort, sport uint16, seq uint32) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint32(b[4:], seq)
	b[12] = 6 << 4 // data offset: 6 words
	b[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(b[14:], 64240)
	copy(b[20:], []byte{2, 4, 0x05, 0xb4}) // MSS 1460
	pseudo := make([]byte, 0, 12+len(b))
	s4, d4 := src.As4(), dst.Addr().As4()
	pseudo = append(append(append(pseudo, s4[:]...), d4[:]...), 0, 6, 0, byte(len(b)))
	pseudo = append(pseudo, b...)
	binary.BigEndian.PutUint16(b[16:], checksum(pseudo))
	return b
}

// HoldResult is what tcp-hold reports.
type HoldResult struct {
	Opened int            `json:"opened"`
	Errors map[string]int `json:"errors,omitempty"`
}

// helperTCPHold opens N connections to ADDR (an echo server), exchanges 1 KiB on each, keeps
// them open and idle for SECONDS, then closes them. Usage: tcp-hold ADDR N SECONDS.
func helperTCPHold(args []string) (any, error) {
	if err := argN(args, 3, "tcp-hold ADDR N SECONDS"); err != nil {
		return nil, err
	}
	n, err1 := strconv.Atoi(args[1])
	secs, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	res := HoldResult{Errors: map[string]int{}}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	msg := make([]byte, 1024)
	for range n {
		c, err := net.DialTimeout("tcp", args[0], helperTimeout)
		if err == nil {
			c.SetDeadline(time.Now().Add(helperTimeout))
			if _, err = c.Write(msg); err == nil {
				_, err = io.ReadFull(c, make([]byte, len(msg)))
			}
		}
		if err != nil {
			res.Errors[errName(err)]++
			if c != nil {
				c.Close()
			}
			continue
		}
		conns = append(conns, c)
		res.Opened++
	}
	time.Sleep(time.Duration(secs) * time.Second)
	return res, nil
}
