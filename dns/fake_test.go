package dns

// Test fixtures: a fake upstream resolver and a client, both on loopback
// only (the network rule: tests send traffic to 127.0.0.0/8 or ::1, nowhere
// else), plus a forwarder harness and a goroutine leak check.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// answerA is the fixed A record the fake upstream answers with.
var answerA = netip.MustParseAddr("192.0.2.1")

// fakeUpstream is a DNS server on one loopback port, UDP and TCP, that
// answers every A question with answerA. Its switches change behaviour.
type fakeUpstream struct {
	addr netip.AddrPort
	udp  *net.UDPConn
	ln   *net.TCPListener

	silent          atomic.Bool // read queries, never answer
	stray           atomic.Bool // UDP: send a response with another ID first
	truncate        atomic.Bool // set TC on every answer
	closeAfterReply atomic.Bool // TCP: close the connection after each answer

	udpQueries atomic.Int64 // queries received over UDP
	tcpQueries atomic.Int64 // queries received over TCP
	tcpConns   atomic.Int64 // TCP connections accepted
	tcpEOFs    atomic.Int64 // TCP connections closed by the peer

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool // guarded by mu; open TCP connections
}

// startFakeUpstream starts a fakeUpstream on ip (a loopback address), UDP
// and TCP on the same port, stopped when the test ends.
func startFakeUpstream(t *testing.T, ip string) *fakeUpstream {
	t.Helper()
	u, err := startFakeUpstreamOn(t, ip, 0)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	return u
}

// startFakeUpstreamOn is startFakeUpstream on the given port (0: any); it
// returns the error if that port is taken.
func startFakeUpstreamOn(t *testing.T, ip string, fixed int) (*fakeUpstream, error) {
	t.Helper()
	u := &fakeUpstream{conns: map[net.Conn]bool{}}
	for try := 0; ; try++ {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip), Port: fixed})
		if err != nil {
			return nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip), Port: port})
		if err != nil {
			pc.Close()
			if try < 20 && fixed == 0 {
				continue // the TCP port was taken; try another
			}
			return nil, fmt.Errorf("ListenTCP(%s:%d): %w", ip, port, err)
		}
		u.udp, u.ln = pc, ln
		u.addr = netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port))
		break
	}
	u.wg.Go(u.serveUDP)
	u.wg.Go(u.serveTCP)
	t.Cleanup(func() {
		u.udp.Close()
		u.ln.Close()
		u.mu.Lock()
		for c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u, nil
}

func (u *fakeUpstream) serveUDP() {
	buf := make([]byte, maxMsgSize)
	for {
		n, from, err := u.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		u.udpQueries.Add(1)
		if u.silent.Load() {
			continue
		}
		reply, err := answer(buf[:n], u.truncate.Load())
		if err != nil {
			continue
		}
		if u.stray.Load() {
			stray := bytes.Clone(reply)
			stray[0] ^= 0xff
			u.udp.WriteTo(stray, from)
		}
		u.udp.WriteTo(reply, from)
	}
}

func (u *fakeUpstream) serveTCP() {
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.tcpConns.Add(1)
		u.mu.Lock()
		u.conns[c] = true
		u.mu.Unlock()
		u.wg.Go(func() {
			defer func() {
				u.mu.Lock()
				delete(u.conns, c)
				u.mu.Unlock()
				c.Close()
			}()
			for {
				q, err := readMsg(c)
				if errors.Is(err, io.EOF) {
					u.tcpEOFs.Add(1)
				}
				if err != nil {
					return
				}
				u.tcpQueries.Add(1)
				if u.silent.Load() {
					continue
				}
				reply, err := answer(q, u.truncate.Load())
				if err != nil {
					return
				}
				if writeMsg(c, reply) != nil || u.closeAfterReply.Load() {
					return
				}
			}
		})
	}
}

// answer builds the response to query q: the questions echoed, and an
// answerA record for each A question.
func answer(q []byte, truncated bool) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil, err
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID:                 h.ID,
		Response:           true,
		RecursionDesired:   h.RecursionDesired,
		RecursionAvailable: true,
		Truncated:          truncated,
	})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	for _, q := range qs {
		if err := b.Question(q); err != nil {
			return nil, err
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, q := range qs {
		if q.Type != dnsmessage.TypeA {
			continue
		}
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		if err := b.AResource(rh, dnsmessage.AResource{A: answerA.As4()}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// query builds an A query for name with the given ID.
func query(t testing.TB, id uint16, name string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	err := b.StartQuestions()
	if err == nil {
		err = b.Question(dnsmessage.Question{
			Name:  dnsmessage.MustNewName(name),
			Type:  dnsmessage.TypeA,
			Class: dnsmessage.ClassINET,
		})
	}
	msg, err2 := b.Finish()
	if err := errors.Join(err, err2); err != nil {
		t.Fatalf("building query %d %s: %v", id, name, err)
	}
	return msg
}

// reply is what a test checks in a response.
type reply struct {
	ID        uint16
	Name      string // of the first question
	A         netip.Addr
	Truncated bool
}

func parseReply(msg []byte) (reply, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return reply{}, err
	}
	if !h.Response {
		return reply{}, errors.New("QR bit clear")
	}
	r := reply{ID: h.ID, Truncated: h.Truncated}
	q, err := p.Question()
	if err != nil {
		return r, err
	}
	r.Name = q.Name.String()
	if err := p.SkipAllQuestions(); err != nil {
		return r, err
	}
	a, err := p.AllAnswers()
	if err != nil {
		return r, err
	}
	for _, rr := range a {
		if ar, ok := rr.Body.(*dnsmessage.AResource); ok {
			r.A = netip.AddrFrom4(ar.A)
		}
	}
	return r, nil
}

// wantReply checks that msg answers an A query for name with ID id.
func wantReply(t *testing.T, msg []byte, id uint16, name string) {
	t.Helper()
	got, err := parseReply(msg)
	want := reply{ID: id, Name: name, A: answerA}
	if err != nil || got != want {
		t.Errorf("reply = %+v, %v; want %+v, nil", got, err, want)
	}
}

// udpExchange sends q from a new socket to addr and returns the first
// datagram received within wait.
func udpExchange(addr net.Addr, q []byte, wait time.Duration) ([]byte, error) {
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMsgSize)
	n, err := c.Read(buf)
	return buf[:n], err
}

// dialTCP connects to addr; the connection is closed when the test ends.
func dialTCP(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial %v: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a hung test fails, not hangs
	return c
}

// logRecorder is a Logf that keeps its lines for assertions and shows
// them in the test log.
type logRecorder struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	l.t.Log(line)
}

func (l *logRecorder) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// harness is a forwarder serving on loopback sockets standing in for the
// stack's 10.0.2.3:53 (or [fd00::3]:53) conns.
type harness struct {
	f       *Forwarder
	pc      *net.UDPConn
	ln      *net.TCPListener
	udpAddr net.Addr
	tcpAddr net.Addr
	logs    *logRecorder
	cancel  context.CancelFunc
	done    chan error // receives Serve's result

	waitOnce sync.Once
	err      error // Serve's result, set by result
	checked  bool  // the test called wait and checked err
}

// startForwarder runs New(cfg) and Serve on ip (a loopback address),
// calling tweak on the Forwarder first if not nil. The test's cleanup
// cancels Serve and fails if it does not return.
func startForwarder(t *testing.T, ip string, cfg Config, tweak func(*Forwarder)) *harness {
	t.Helper()
	h := &harness{logs: &logRecorder{t: t}, done: make(chan error, 1)}
	if cfg.Logf == nil {
		cfg.Logf = h.logs.logf
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	if tweak != nil {
		tweak(f)
	}
	h.f = f
	if h.pc, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)}); err != nil {
		t.Fatalf("ListenUDP(%s): %v", ip, err)
	}
	if h.ln, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip)}); err != nil {
		h.pc.Close()
		t.Fatalf("ListenTCP(%s): %v", ip, err)
	}
	h.udpAddr, h.tcpAddr = h.pc.LocalAddr(), h.ln.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- f.Serve(ctx, h.pc, h.ln) }()
	t.Cleanup(func() {
		cancel()
		checked := h.checked
		if err := h.result(); err != nil && !checked {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// wait waits for Serve to return and returns its result for the test to
// check; it fails if that takes over 10 s.
func (h *harness) wait() error {
	h.checked = true
	return h.result()
}

func (h *harness) result() error {
	h.waitOnce.Do(func() {
		select {
		case h.err = <-h.done:
		case <-time.After(10 * time.Second):
			h.err = errors.New("did not return within 10s of cancel")
		}
	})
	return h.err
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// forwarderGoroutines returns the stacks of goroutines running forwarder
// code (Serve included) at this moment. A goroutine started by the
// forwarder that has returned from forwarder code (say, one that is past
// its WaitGroup.Done) does not count.
func forwarderGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for line := range strings.Lines(g) {
			if strings.HasPrefix(line, "created by ") {
				continue
			}
			if strings.Contains(line, "usernet/dns.(*Forwarder)") || strings.Contains(line, "usernet/dns.(*interruptible)") {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// checkGoroutineLeaks fails the test if, once its other cleanups have
// run, more goroutines are alive than when it started (after a grace
// period for goroutines that are just exiting). Call it first.
func checkGoroutineLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutine leak: %d before the test, %d after:\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}
