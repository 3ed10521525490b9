// Package dns is the DNS forwarder behind the virtual network's DNS address
// (10.0.2.3:53): it relays raw DNS messages, over UDP and TCP, to one
// upstream resolver on the host side. It imports no gVisor type: it serves
// whatever net.PacketConn and net.Listener it is handed.
//
// The forwarder parses only the 12-byte DNS header (ID and QR bit), in the
// spirit of tailscale's net/dns/resolver: it never rewrites a message, so
// record types it does not know, EDNS options and the TC bit all reach the
// client exactly as the upstream sent them.
//
// It owns its upstream sockets and the goroutines serving what it is
// handed. It must not import gVisor or any other usernet package.
package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/internal/ratelog"
)

const (
	// DefaultTimeout is the per-query timeout used when Config.Timeout is 0.
	DefaultTimeout = 5 * time.Second

	// tcpIdleTimeout bounds how long a TCP client connection may wait
	// between (or in the middle of) queries before it is closed.
	tcpIdleTimeout = 10 * time.Second

	// maxUDPInFlight bounds the UDP queries relayed at once; beyond it
	// queries are dropped, as a busy resolver would, and the client retries.
	// Each in-flight query holds one host socket and one 64 KiB buffer.
	maxUDPInFlight = 256

	// maxTCPConns bounds the TCP client connections served at once; beyond
	// it new connections are closed at once. Each holds at most one upstream
	// TCP connection.
	maxTCPConns = 64

	// maxMsgSize is the largest DNS message over TCP (2-byte length
	// prefix) and larger than any UDP payload.
	maxMsgSize = 65535

	// headerLen is the size of the fixed DNS header; shorter messages are
	// malformed.
	headerLen = 12

	// logEvery rate-limits log lines that a client or a dead upstream can
	// trigger once per query.
	logEvery = 10 * time.Second
)

// Config configures a Forwarder.
type Config struct {
	// Upstream is the resolver to relay to, dialled from the host (so
	// 127.0.0.x works). Port 0 means 53.
	Upstream netip.AddrPort
	// ResolvConf, if set, is the resolv.conf file Upstream was taken
	// from: the forwarder follows it, switching to its first usable
	// nameserver (port 53) when the file changes, looked at no more than
	// once a second, on a query. A version of the file without a usable
	// nameserver, or one that Check refuses, is logged and leaves the
	// upstream as it was, as does a file that cannot be read.
	ResolvConf string
	// Check, if set, vets each upstream taken from ResolvConf (not
	// Upstream, which the caller vetted).
	Check func(netip.AddrPort) error
	// Timeout bounds each query: dial, send and wait for the reply. With no
	// reply in time a UDP query is dropped and a TCP client connection is
	// closed. 0 means DefaultTimeout.
	Timeout time.Duration
	// Logf receives operational log lines. nil discards them. Errors caused
	// by the end of Serve's context are never logged.
	Logf func(format string, args ...any)
	// Names, if set, vets every query's name and sees every answer's
	// addresses (names.go).
	Names Names
}

// Forwarder relays DNS queries to one upstream resolver (at a time: see
// Config.ResolvConf). It is safe for concurrent use; Serve may run several
// times at once (e.g. one call for the IPv4 and one for the IPv6 DNS
// address), and the in-flight limits are shared between the calls.
type Forwarder struct {
	upstream atomic.Pointer[netip.AddrPort] // never nil after New
	follow   *resolvFollower                // nil: Upstream is fixed
	timeout  time.Duration
	logf     func(format string, args ...any)
	names    Names // nil: every name is relayed
	dialer   net.Dialer

	// Set by New; tests in this package lower them before calling Serve.
	idleTimeout time.Duration
	udpSem      chan struct{} // one token per UDP query in flight
	tcpSem      chan struct{} // one token per TCP client connection

	udpDropped  atomic.Uint64 // UDP queries dropped because udpSem was full
	tcpRejected atomic.Uint64 // TCP connections closed because tcpSem was full

	dropLog     ratelog.Every // for udpDropped/tcpRejected
	upstreamLog ratelog.Every // for upstream failures
}

// New validates cfg and returns a Forwarder. It opens no socket and starts
// no goroutine.
func New(cfg Config) (*Forwarder, error) {
	up := cfg.Upstream
	if up.Port() == 0 {
		up = netip.AddrPortFrom(up.Addr(), 53)
	}
	up, err := checkUpstream(up)
	if err != nil {
		return nil, fmt.Errorf("dns: upstream %v: %w", cfg.Upstream, err)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("dns: negative timeout %v", cfg.Timeout)
	}
	f := &Forwarder{
		timeout:     cfg.Timeout,
		logf:        cfg.Logf,
		names:       cfg.Names,
		idleTimeout: tcpIdleTimeout,
		udpSem:      make(chan struct{}, maxUDPInFlight),
		tcpSem:      make(chan struct{}, maxTCPConns),
	}
	if f.timeout == 0 {
		f.timeout = DefaultTimeout
	}
	if f.logf == nil {
		f.logf = func(string, ...any) {}
	}
	f.upstream.Store(&up)
	if cfg.ResolvConf != "" {
		f.follow = &resolvFollower{
			path:  cfg.ResolvConf,
			check: cfg.Check,
			logf:  f.logf,
			port:  53,
			every: resolvCheckEvery,
		}
	}
	return f, nil
}

// Upstream returns the resolver f relays to now, with its port filled in.
func (f *Forwarder) Upstream() netip.AddrPort { return *f.upstream.Load() }

// upstreamForQuery returns the resolver a query starting now goes to,
// first following the resolv.conf file if it is time to look at it.
func (f *Forwarder) upstreamForQuery() netip.AddrPort {
	if f.follow != nil {
		f.follow.poll(time.Now(), &f.upstream)
	}
	return *f.upstream.Load()
}

// Serve relays DNS over UDP from pc and over TCP from ln until ctx ends.
// Either may be nil. Serve owns pc and ln from the moment it is called: it
// closes both, and every client and upstream connection it opened, before it
// returns, and it returns only when every goroutine it started has exited.
//
// Serve returns nil when ctx ends. It returns an error, after the same
// cleanup, if pc or ln is closed by someone else while ctx is still alive.
// Other read or accept errors are logged and retried with a backoff.
func (f *Forwarder) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg   sync.WaitGroup // the loops below and every goroutine they start
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	if pc != nil {
		wg.Go(func() {
			if err := f.serveUDP(ctx, &wg, pc); err != nil {
				fail(err)
			}
		})
	}
	if ln != nil {
		wg.Go(func() {
			if err := f.serveTCP(ctx, &wg, ln); err != nil {
				fail(err)
			}
		})
	}

	<-ctx.Done()
	// Serve is the only closer of pc and ln. Closing them ends the read and
	// accept loops; per-query and per-connection goroutines watch ctx and
	// close their own sockets.
	if pc != nil {
		pc.Close()
	}
	if ln != nil {
		ln.Close()
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	return errors.Join(errs...)
}

// checkUpstream rejects addresses a resolver cannot be reached at, and
// unmaps IPv4-mapped IPv6 addresses so that the host socket is IPv4.
func checkUpstream(ap netip.AddrPort) (netip.AddrPort, error) {
	a := ap.Addr()
	switch {
	case !a.IsValid():
		return ap, errors.New("no address")
	case ap.Port() == 0:
		return ap, errors.New("port 0")
	}
	a = a.Unmap()
	switch {
	case a.IsUnspecified():
		return ap, errors.New("unspecified address")
	case a.IsMulticast():
		return ap, errors.New("multicast address")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return ap, errors.New("broadcast address")
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// isQuery reports whether msg can be relayed as a query: a full header with
// the QR bit clear. Responses sent to the forwarder are dropped, so that two
// forwarders pointed at each other cannot loop.
func isQuery(msg []byte) bool {
	return len(msg) >= headerLen && msg[2]&0x80 == 0
}

// isReplyTo reports whether msg is a response carrying query's ID.
func isReplyTo(msg, query []byte) bool {
	return len(msg) >= headerLen && msg[2]&0x80 != 0 &&
		msg[0] == query[0] && msg[1] == query[1]
}

// aLongTimeAgo is a deadline in the past; setting it unblocks pending I/O.
var aLongTimeAgo = time.Unix(1, 0)

// interruptible lets the goroutine that owns a connection move its
// deadline, while the end of a context (seen on another goroutine) moves the
// deadline into the past for good, unblocking any read, write or later
// deadline change. The owner remains the only closer of the connection.
type interruptible struct {
	c    interface{ SetDeadline(time.Time) error }
	stop func() bool   // unregisters the context.AfterFunc
	done chan struct{} // closed when interrupt has run

	mu          sync.Mutex
	interrupted bool // guarded by mu
}

// watch arranges for c's deadline to be set in the past when ctx ends.
// The caller must call release before closing c.
func watch(ctx context.Context, c interface{ SetDeadline(time.Time) error }) *interruptible {
	i := &interruptible{c: c, done: make(chan struct{})}
	i.stop = context.AfterFunc(ctx, i.interrupt)
	return i
}

func (i *interruptible) interrupt() {
	defer close(i.done)
	i.mu.Lock()
	defer i.mu.Unlock()
	i.interrupted = true
	i.c.SetDeadline(aLongTimeAgo)
}

// setDeadline sets c's deadline unless the context has ended, in which case
// it returns net.ErrClosed.
func (i *interruptible) setDeadline(t time.Time) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.interrupted {
		return net.ErrClosed
	}
	return i.c.SetDeadline(t)
}

// release unregisters the watch, waiting for an interrupt already under way
// so that no goroutine outlives the connection's owner.
func (i *interruptible) release() {
	if !i.stop() {
		<-i.done
	}
}

// pause waits before retrying a failed read or accept: 5 ms, doubling up
// to 1 s, or until ctx ends. It returns the delay to pass next time.
func pause(ctx context.Context, d time.Duration) time.Duration {
	d = min(max(2*d, 5*time.Millisecond), time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return d
}
