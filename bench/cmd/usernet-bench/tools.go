package main

// The small tools run inside a namespace (through nsenter), and the servers the driver runs
// on the host's loopback for them.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tokenGet prints what the server at -addr sends before closing: the gateway check.
func tokenGet(args []string) error {
	fs := flag.NewFlagSet("token-get", flag.ContinueOnError)
	addr := fs.String("addr", "10.0.2.2:0", "token server, seen from the namespace")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	b, err := io.ReadAll(io.LimitReader(c, 256))
	if err != nil {
		return fmt.Errorf("read token from %s: %w", *addr, err)
	}
	fmt.Println(strings.TrimSpace(string(b)))
	return nil
}

// rrResult is what `rr` prints as JSON.
type rrResult struct {
	Mode         string  `json:"mode"`
	Clients      int     `json:"clients"`
	Transactions int     `json:"transactions"` // completed, some maybe after the end
	Seconds      float64 `json:"seconds"`
	TPS          float64 `json:"tps"` // all clients' transactions completed by the end ÷ Seconds
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	Errors       int     `json:"errors"`
}

// rrClient measures TCP request/response against an echo server: -mode rr is a 1-byte
// ping-pong on one connection (netperf TCP_RR); -mode crr is connect, 1-byte request,
// 1-byte response, close, per transaction (netperf TCP_CRR). -c N runs N such clients at
// once (N connections, or N connect loops); the rate is theirs together and the
// percentiles are over every client's transactions.
func rrClient(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	addr := fs.String("addr", "10.0.2.2:0", "echo server")
	mode := fs.String("mode", "rr", "rr (ping-pong on one connection) or crr (connection per transaction)")
	dur := fs.Duration("d", 5*time.Second, "duration")
	clients := fs.Int("c", 1, "concurrent clients")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := runRR(*mode, *addr, *dur, *clients)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func runRR(mode, addr string, dur time.Duration, clients int) (*rrResult, error) {
	if clients < 1 {
		return nil, errors.New("-c must be at least 1")
	}
	if mode != "rr" && mode != "crr" {
		return nil, fmt.Errorf("unknown -mode %q", mode)
	}
	// rr: every connection is up before the clock starts, as with one client.
	conns := make([]net.Conn, clients)
	if mode == "rr" {
		for i := range conns {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return nil, fmt.Errorf("connection %d of %d: %w", i+1, clients, err)
			}
			defer c.Close()
			conns[i] = c
		}
	}
	per := make([][]time.Duration, clients)
	errs := make([]int, clients)
	inTime := make([]int, clients) // transactions completed by the end
	fatal := make([]error, clients)
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<12)
			buf := []byte{'x'}
			switch mode {
			case "rr":
				c := conns[i]
				c.SetDeadline(end.Add(10 * time.Second))
				for time.Now().Before(end) {
					t := time.Now()
					if _, err := c.Write(buf); err != nil {
						fatal[i] = fmt.Errorf("client %d: write after %d transactions: %w", i+1, len(lat), err)
						break
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						fatal[i] = fmt.Errorf("client %d: read after %d transactions: %w", i+1, len(lat), err)
						break
					}
					now := time.Now()
					lat = append(lat, now.Sub(t))
					if !now.After(end) {
						inTime[i]++
					}
				}
			case "crr":
				for time.Now().Before(end) {
					t := time.Now()
					if err := crrOnce(addr, buf); err != nil {
						errs[i]++
						if errs[i] > 100 && errs[i] > len(lat) {
							fatal[i] = fmt.Errorf("client %d: too many errors (%d, %d ok): %w", i+1, errs[i], len(lat), err)
							break
						}
						continue
					}
					now := time.Now()
					lat = append(lat, now.Sub(t))
					if !now.After(end) {
						inTime[i]++
					}
				}
			}
			per[i] = lat
		})
	}
	wg.Wait()
	if err := errors.Join(fatal...); err != nil {
		return nil, err
	}
	// The rate counts what completed within the run: a client stuck in a connect timeout
	// after the end must not stretch the others' time. Latencies keep every transaction.
	res := rrResult{Mode: mode, Clients: clients, Seconds: dur.Seconds()}
	for _, e := range errs {
		res.Errors += e
	}
	lat := mergeLatencies(per)
	res.Transactions = len(lat)
	if len(lat) == 0 {
		return nil, errors.New("no transaction completed")
	}
	n := 0
	for _, k := range inTime {
		n += k
	}
	res.TPS = float64(n) / res.Seconds
	res.P50us = percentileUS(lat, 50)
	res.P99us = percentileUS(lat, 99)
	return &res, nil
}

func crrOnce(addr string, buf []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close() // the client closes first, as netperf's TCP_CRR does
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// udpResult is what `udpflows` prints as JSON.
type udpResult struct {
	Flows    int     `json:"flows"`
	Sent     int     `json:"sent"`
	Answered int     `json:"answered"` // replies that came back before the end
	Lost     int     `json:"lost"`     // queries with no reply within -timeout
	Seconds  float64 `json:"seconds"`
	QPS      float64 `json:"qps"`
	LossPct  float64 `json:"loss_pct"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
}

// udpFlowsClient is a DNS storm: -n UDP sockets (so -n flows, each from its own port) each
// send a small query to -addr, wait for the echo, and send the next, for -d. A query not
// answered within -timeout counts as lost and the flow goes on; one still in flight at the
// end counts as neither.
func udpFlowsClient(args []string) error {
	fs := flag.NewFlagSet("udpflows", flag.ContinueOnError)
	addr := fs.String("addr", "10.0.2.2:0", "UDP echo server")
	n := fs.Int("n", 1000, "flows (sockets)")
	dur := fs.Duration("d", 5*time.Second, "duration")
	size := fs.Int("size", 64, "datagram size, bytes (at least 8)")
	timeout := fs.Duration("timeout", 500*time.Millisecond, "a query unanswered after this is lost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := runUDPFlows(*addr, *n, *size, *dur, *timeout)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func runUDPFlows(addr string, n, size int, dur, timeout time.Duration) (*udpResult, error) {
	if n < 1 || size < 8 || size > 1400 {
		return nil, errors.New("-n must be at least 1 and -size from 8 to 1400")
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return nil, fmt.Errorf("flow %d of %d: %w", i+1, n, err)
		}
		defer c.Close()
		conns[i] = c
	}
	type flowStats struct {
		sent, lost int
		lat        []time.Duration
	}
	stats := make([]flowStats, n)
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			st := &stats[i]
			c := conns[i]
			q := make([]byte, size)
			r := make([]byte, 2048)
			for seq := uint64(1); time.Now().Before(end); seq++ {
				binary.BigEndian.PutUint64(q, seq)
				t := time.Now()
				if _, err := c.Write(q); err != nil {
					// ECONNREFUSED from an earlier ICMP error, or a full buffer: a lost query.
					st.sent++
					st.lost++
					time.Sleep(time.Millisecond)
					continue
				}
				st.sent++
				deadline := t.Add(timeout)
				if end.Before(deadline) {
					deadline = end
				}
				c.SetReadDeadline(deadline)
				for {
					m, err := c.Read(r)
					switch {
					case !time.Now().Before(end):
						st.sent-- // in flight at the end: neither answered nor lost
					case err != nil:
						st.lost++ // no reply within -timeout (or an ICMP error)
					case m < 8 || binary.BigEndian.Uint64(r[:8]) != seq:
						continue // a late reply to an earlier query: keep waiting for this one
					default:
						st.lat = append(st.lat, time.Since(t))
					}
					break
				}
			}
		})
	}
	wg.Wait()
	res := udpResult{Flows: n, Seconds: dur.Seconds()}
	per := make([][]time.Duration, n)
	for i, st := range stats {
		res.Sent += st.sent
		res.Lost += st.lost
		per[i] = st.lat
	}
	lat := mergeLatencies(per)
	res.Answered = len(lat)
	if res.Answered == 0 {
		return nil, fmt.Errorf("no query answered (%d sent, %d lost)", res.Sent, res.Lost)
	}
	res.QPS = float64(res.Answered) / res.Seconds
	if res.Sent > 0 {
		res.LossPct = 100 * float64(res.Lost) / float64(res.Sent)
	}
	res.P50us = percentileUS(lat, 50)
	res.P99us = percentileUS(lat, 99)
	return &res, nil
}

// echoServer listens on -addr and echoes every byte of every connection until EOF: the
// server for rr and crr through a port forward, run inside the namespace (the host side's is
// hostServers.echoLn). It runs until killed.
func echoServer(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	addr := fs.String("addr", "0.0.0.0:5202", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// holdClient opens -n connections to a server that greets each with one byte, reads the
// greeting (so the connection is established end to end, through the backend), prints
// "ready N" and keeps them open until its stdin closes.
func holdClient(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "10.0.2.2:0", "hold server")
	n := fs.Int("n", 1000, "connections")
	workers := fs.Int("workers", 16, "concurrent dials")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conns := make([]net.Conn, *n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for range *workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= *n || firstErr.Load() != nil {
					return
				}
				c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
				if err == nil {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					_, err = io.ReadFull(c, make([]byte, 1))
					c.SetReadDeadline(time.Time{})
				}
				if err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	fmt.Printf("ready %d\n", *n)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// waitNet prints "polling", then "ready" as soon as -dev has -addr and a default route via
// -gw: the startup measurement, the same method for every backend.
func waitNet(args []string) error {
	fs := flag.NewFlagSet("waitnet", flag.ContinueOnError)
	dev := fs.String("dev", "tap0", "interface")
	addr := fs.String("addr", "10.0.2.100", "IPv4 address the interface must have")
	gw := fs.String("gw", "10.0.2.2", "default gateway that must be in place")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after")
	interval := fs.Duration("interval", time.Millisecond, "poll interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	want := net.ParseIP(*addr).To4()
	g := net.ParseIP(*gw).To4()
	if want == nil || g == nil {
		return errors.New("-addr and -gw must be IPv4 addresses")
	}
	// /proc/net/route prints addresses as the hex of the in-memory (little-endian) uint32.
	gwHex := fmt.Sprintf("%02X%02X%02X%02X", g[3], g[2], g[1], g[0])
	fmt.Println("polling")
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		if hasRoute(*dev, gwHex) && hasAddr(*dev, want) {
			fmt.Println("ready")
			return nil
		}
		time.Sleep(*interval)
	}
	return fmt.Errorf("%s has no %s and default route via %s after %v", *dev, *addr, *gw, *timeout)
}

func hasRoute(dev, gwHex string) bool {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) >= 3 && fl[0] == dev && fl[1] == "00000000" && fl[2] == gwHex {
			return true
		}
	}
	return false
}

func hasAddr(dev string, want net.IP) bool {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return false
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(want) {
			return true
		}
	}
	return false
}

// hostServers are the driver's servers on the host's 127.0.0.1.
type hostServers struct {
	token    atomic.Pointer[string]
	tokenLn  net.Listener
	echoLn   net.Listener   // rr and crr: echoes every byte until EOF
	holdLn   net.Listener   // greets each connection with one byte, then holds it until EOF
	udpEcho  net.PacketConn // udpflows: sends every datagram back where it came from
	conns    sync.WaitGroup
	mu       sync.Mutex
	open     map[net.Conn]struct{}
	accepted atomic.Int64
}

func startHostServers(ctx context.Context) (*hostServers, error) {
	s := &hostServers{open: map[net.Conn]struct{}{}}
	empty := ""
	s.token.Store(&empty)
	for _, ln := range []*net.Listener{&s.tokenLn, &s.echoLn, &s.holdLn} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.close()
			return nil, err
		}
		*ln = l
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		s.close()
		return nil, err
	}
	s.udpEcho = pc
	// Two readers: one goroutine would be the bottleneck of a storm from many flows.
	for range 2 {
		go func() {
			b := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(b)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				pc.WriteTo(b[:n], from)
			}
		}()
	}
	go s.serve(s.tokenLn, func(c net.Conn) { io.WriteString(c, *s.token.Load()+"\n") })
	go s.serve(s.echoLn, func(c net.Conn) { io.Copy(c, c) })
	go s.serve(s.holdLn, func(c net.Conn) {
		c.Write([]byte{'h'})
		io.Copy(io.Discard, c)
	})
	context.AfterFunc(ctx, s.close)
	return s, nil
}

func (s *hostServers) serve(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.open == nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.accepted.Add(1)
		s.conns.Go(func() {
			handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.open, c)
			s.mu.Unlock()
		})
	}
}

func (s *hostServers) close() {
	for _, ln := range []net.Listener{s.tokenLn, s.echoLn, s.holdLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.udpEcho != nil {
		s.udpEcho.Close()
	}
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.open = nil
	s.mu.Unlock()
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
