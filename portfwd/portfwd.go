// Package portfwd is the registry of host→namespace port forwards: slirp4netns's
// hostfwd, usernet's -p/--publish and the add_hostfwd API command all end here.
//
// A Registry owns one host socket per forward (a TCP listener or a UDP socket)
// and reaches the namespace only through its [Dialer], which the stack
// implements. Add binds the host socket before it returns, so "port busy" is
// reported to the caller; the goroutines that serve the sockets belong to Run,
// which returns only after every one of them has exited.
//
// Forward IDs start at 1 and are never reused, as in slirp4netns's api.c.
//
// It may import netplan and relay, and must not import stack or gVisor:
// the stack implements [Dialer], not the other way round.
package portfwd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/relay"
	"golang.org/x/sys/unix"
)

// Dialer opens connections INTO the namespace on behalf of host-side clients.
// The stack implements it; tests use loopback sockets. Both methods are called
// concurrently from many goroutines and never under a Registry lock.
type Dialer interface {
	// DialTCP connects to dst inside the namespace with src as the source
	// address the namespace sees (src is spoofed; it is not an address of the
	// host). It must give up when ctx ends. src.Port() == 0 means "any free
	// port". If src is already in use towards dst, the error must wrap
	// syscall.EADDRINUSE; the Registry then retries once with port 0.
	// The returned conn should implement CloseWrite() error, so that a
	// client's half-close reaches the guest (without it the guest's side stays
	// open until the guest closes too), and relay.Aborter, so that a client's
	// reset reaches the guest as a reset (without it, as a FIN).
	DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
	// DialUDP returns a connected datagram conn from src to dst inside the
	// namespace: each Write sends one datagram to dst, each Read returns one
	// datagram from dst. It must not block on the network, and the conn must
	// honour SetReadDeadline (the idle timeout uses it). src and EADDRINUSE
	// are as for DialTCP.
	//
	// For both, Close must unblock a Read or Write in progress.
	DialUDP(src, dst netip.AddrPort) (net.Conn, error)
}

// Config configures a Registry. Zero values are defaults where stated.
type Config struct {
	// Dialer opens the namespace side of every flow. Required.
	Dialer Dialer

	// Plan is the virtual network's addresses; the Registry reads these:
	//
	//   - Guest4 and Guest6 are the default guest addresses. A Rule whose
	//     GuestAddr is unset or unspecified (0.0.0.0, ::) forwards to Guest4
	//     when its HostAddr is IPv4 and to Guest6 when its HostAddr is IPv6;
	//     when Guest6 is not valid (IPv6 off, or the guest's SLAAC address
	//     unknown), IPv6 host addresses forward to Guest4 (a host [::]:8080
	//     listener in front of an IPv4-only namespace).
	//   - Gateway4 and Gateway6 are what clients that cannot appear as
	//     themselves inside the namespace appear as: loopback clients
	//     (127.0.0.0/8, ::1), link-local ones, clients inside the virtual
	//     network, and clients of the other address family than the guest's.
	//   - Net4 and Net6: an explicit GuestAddr must lie inside one, and must
	//     not be its network address, its gateway or (IPv4) its broadcast
	//     address. A family whose network is invalid is off: its guest
	//     addresses are rejected.
	Plan netplan.Plan

	// Splice, when set, carries TCP connections from the host's loopback
	// instead of the Dialer: a host socket made inside the namespace
	// connects to the guest address (pasta's local path), so that the
	// connection comes from the namespace's own address and moves from
	// kernel to kernel without the tap. nil: every client goes through
	// the Dialer.
	Splice func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// SpliceUDP is Splice for UDP flows from the host's loopback: a
	// connected socket made inside the namespace.
	SpliceUDP func(dst netip.AddrPort) (net.Conn, error)

	// UDPIdleTimeout ends a UDP flow with no datagram in either direction for
	// this long. Zero = 60s.
	UDPIdleTimeout time.Duration

	// DialTimeout bounds Dialer.DialTCP (the handshake inside the namespace).
	// Zero = 10s.
	DialTimeout time.Duration

	// Logf logs errors the Registry cannot return to anyone (a failed dial for
	// an accepted client, a dropped datagram). nil = discard. Nothing is logged
	// for errors caused by Remove or by Run's shutdown.
	Logf func(format string, args ...any)
}

// Rule is one forward: host HostAddr:HostPort → guest GuestAddr:GuestPort.
type Rule struct {
	Proto    string     // "tcp" or "udp"
	HostAddr netip.Addr // zero = 0.0.0.0 (IPv4 only; use :: for IPv6, which is IPv6 only)
	HostPort uint16     // 1–65535
	// HostIfname, when set, binds the host socket to that interface
	// (SO_BINDTODEVICE: pasta's -t ADDR%IFNAME/PORT and %IFNAME/PORT).
	HostIfname string
	GuestAddr  netip.Addr // zero or unspecified = the default guest (see Config.Guest4)
	GuestPort  uint16     // 1–65535
}

func (r Rule) String() string {
	return fmt.Sprintf("%s %s -> %s", r.Proto, addrPortString(r.HostAddr, r.HostPort),
		addrPortString(r.GuestAddr, r.GuestPort))
}

// addrPortString formats a:p, with "*" for an unset address.
func addrPortString(a netip.Addr, p uint16) string {
	if !a.IsValid() {
		return fmt.Sprintf("*:%d", p)
	}
	return netip.AddrPortFrom(a, p).String()
}

// Entry is a registered forward, as List reports it: HostAddr and GuestAddr
// are the resolved addresses (0.0.0.0 and the default guest filled in).
type Entry struct {
	ID int
	Rule
}

var (
	// ErrNotFound is returned (wrapped) by Remove for an ID that is not registered.
	ErrNotFound = errors.New("no such forward")
	// ErrClosed is returned (wrapped) by Add once Run has shut the Registry down.
	ErrClosed = errors.New("port forward registry is closed")
)

// ArgError reports an invalid Rule field. Field is named as in slirp4netns's
// add_hostfwd request: proto, host_addr, host_port, guest_addr, guest_port.
type ArgError struct {
	Field string
	Msg   string // why, for logs; may be empty
}

func (e *ArgError) Error() string {
	if e.Msg == "" {
		return "invalid " + e.Field
	}
	return "invalid " + e.Field + ": " + e.Msg
}

// BindError reports that the host socket could not be bound: the port is in
// use, privileged, or the address is not the host's. Err is the OS error
// (*net.OpError wrapping e.g. syscall.EADDRINUSE or syscall.EACCES).
type BindError struct {
	Rule Rule
	Err  error
}

func (e *BindError) Error() string { return fmt.Sprintf("cannot bind %v: %v", e.Rule, e.Err) }
func (e *BindError) Unwrap() error { return e.Err }

// DuplicateError reports a Rule with the same proto, host address and host port
// as the registered forward ID.
type DuplicateError struct {
	Rule Rule
	ID   int
}

func (e *DuplicateError) Error() string {
	return fmt.Sprintf("%s %s is already forwarded (id %d)", e.Rule.Proto,
		addrPortString(e.Rule.HostAddr, e.Rule.HostPort), e.ID)
}

const (
	defaultUDPIdleTimeout = 60 * time.Second
	defaultDialTimeout    = 10 * time.Second
)

// Registry is the set of forwards. Its methods are safe for concurrent use.
type Registry struct {
	cfg  Config
	logf func(string, ...any)

	ctx    context.Context    // alive until Run shuts down; parent of every forward's ctx
	cancel context.CancelFunc // called by Run on shutdown
	wg     sync.WaitGroup     // every goroutine started for a forward; Run waits for it
	// poller waits for the host sockets of idle TCP flows (relay.Poller):
	// made and run by Run (nil if it could not be made), closed after wg.
	poller *relay.Poller

	mu struct {
		sync.Mutex
		state int // stateNew → stateRunning → stateClosed
		next  int // the next ID; IDs are never reused
		fwds  map[int]*forward
		many  []*many // AddMany's
	}
}

const (
	stateNew     = iota // Add binds, goroutines wait for Run
	stateRunning        // Add binds and starts serving at once
	stateClosed         // Add fails with ErrClosed
)

// forward is one registered rule and its host socket.
type forward struct {
	Entry
	ln     net.Listener       // tcp
	pc     *net.UDPConn       // udp
	ctx    context.Context    // ends on Remove or shutdown; every flow's ctx
	cancel context.CancelFunc // called by Remove and Run, which also close ln/pc
	// dual4, when valid, says the host socket is dual-stack (AddMany's):
	// IPv4 clients go to dual4, not to GuestAddr.
	dual4 netip.Addr
	// flows counts the TCP connections or UDP flows made; toGuest and
	// fromGuest the payload bytes each way (Stats).
	flows, toGuest, fromGuest atomic.Uint64
}

// Stats is one forward's traffic since it was added.
type Stats struct {
	ID        int    `json:"id"`
	Rule      string `json:"rule"`
	Flows     uint64 `json:"flows"` // TCP connections or UDP flows
	ToGuest   uint64 `json:"bytes_to_guest"`
	FromGuest uint64 `json:"bytes_from_guest"`
}

// Stats returns every forward's counters, ordered by ID.
func (r *Registry) Stats() []Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Stats, 0, len(r.mu.fwds))
	for _, id := range slices.Sorted(maps.Keys(r.mu.fwds)) {
		f := r.mu.fwds[id]
		out = append(out, Stats{ID: id, Rule: f.Rule.String(), Flows: f.flows.Load(), ToGuest: f.toGuest.Load(), FromGuest: f.fromGuest.Load()})
	}
	return out
}

// New returns an empty Registry. It starts nothing; see Run.
func New(cfg Config) *Registry {
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	r := &Registry{cfg: cfg, logf: cfg.Logf}
	if r.logf == nil {
		r.logf = func(string, ...any) {}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.mu.next = 1
	r.mu.fwds = make(map[int]*forward)
	return r
}

// Add validates rule, binds its host socket and registers it. It returns the
// new ID, or an error and registers nothing (and uses up no ID): *ArgError for
// an invalid field, *DuplicateError, *BindError, or ErrClosed.
// Before Run starts, the socket is bound but not served (clients queue).
func (r *Registry) Add(ctx context.Context, rule Rule) (int, error) {
	rule, err := r.resolve(rule)
	if err != nil {
		return 0, fmt.Errorf("add %v: %w", rule, err)
	}
	// Binding is a local syscall, quick; doing it under the lock makes the
	// duplicate check, the bind and the ID allocation one step.
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.state == stateClosed {
		return 0, fmt.Errorf("add %v: %w", rule, ErrClosed)
	}
	for _, f := range r.mu.fwds {
		if f.Proto == rule.Proto && f.HostAddr == rule.HostAddr && f.HostPort == rule.HostPort {
			return 0, fmt.Errorf("add %v: %w", rule, &DuplicateError{Rule: rule, ID: f.ID})
		}
	}
	f := &forward{Entry: Entry{Rule: rule}}
	if err := f.bind(ctx); err != nil {
		return 0, fmt.Errorf("add %v: %w", rule, &BindError{Rule: rule, Err: err})
	}
	f.ID = r.mu.next
	r.mu.next++
	f.ctx, f.cancel = context.WithCancel(r.ctx)
	r.mu.fwds[f.ID] = f
	if r.mu.state == stateRunning {
		r.startLocked(f)
	}
	return f.ID, nil
}

// List returns the registered forwards ordered by ID.
func (r *Registry) List() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, 0, len(r.mu.fwds))
	for _, id := range slices.Sorted(maps.Keys(r.mu.fwds)) {
		out = append(out, r.mu.fwds[id].Entry)
	}
	return out
}

// Remove unregisters forward id and closes its host socket before it returns,
// so the port can be bound again at once; its live flows are closed too (their
// goroutines finish shortly after). It returns an error wrapping ErrNotFound
// for an unknown id.
func (r *Registry) Remove(id int) error {
	r.mu.Lock()
	f, ok := r.mu.fwds[id]
	delete(r.mu.fwds, id)
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove %d: %w", id, ErrNotFound)
	}
	f.cancel()      // aborts dials, closes flows
	f.closeSocket() // ends the accept or read loop; the port is free from here on
	return nil
}

// Run serves every forward, present and future, until ctx ends; then it
// closes every socket and flow, and returns nil after every goroutine it
// started has exited. Add fails with ErrClosed from then on. Call Run once;
// forwards added before it are served from its start. A Registry that is
// never Run should still be Run with a cancelled ctx to release its sockets.
func (r *Registry) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.mu.state != stateNew {
		r.mu.Unlock()
		return errors.New("portfwd: Run called twice")
	}
	r.mu.state = stateRunning
	if p, err := relay.NewPoller(); err != nil {
		// Idle flows then keep a goroutine each.
		r.logf("portfwd: %v", err)
	} else {
		r.poller = p
		r.wg.Go(func() {
			if err := p.Run(r.ctx); err != nil {
				r.logf("portfwd: %v", err)
			}
		})
	}
	for _, f := range r.mu.fwds {
		r.startLocked(f)
	}
	for _, mm := range r.mu.many {
		r.wg.Go(func() { r.serveMany(mm) })
	}
	r.mu.Unlock()

	<-ctx.Done()

	r.mu.Lock()
	r.mu.state = stateClosed
	fwds := r.mu.fwds
	r.mu.fwds = map[int]*forward{}
	r.mu.Unlock()
	r.cancel() // every forward's ctx: closes sockets, aborts dials, closes flows
	for _, f := range fwds {
		f.closeSocket()
	}
	r.wg.Wait()
	if r.poller != nil {
		r.poller.Close()
	}
	return nil
}

// startLocked starts serving f. Must hold r.mu, with state stateRunning.
func (r *Registry) startLocked(f *forward) {
	if f.ln != nil {
		r.wg.Go(func() { r.serveTCP(f) })
	} else {
		r.wg.Go(func() { r.serveUDP(f) })
	}
}

// resolve validates rule and fills in its defaults. Field checks go in
// slirp4netns's order, so the first bad field is the one it would report.
func (r *Registry) resolve(rule Rule) (Rule, error) {
	if rule.Proto != "tcp" && rule.Proto != "udp" {
		return rule, &ArgError{Field: "proto", Msg: fmt.Sprintf("%q is not tcp or udp", rule.Proto)}
	}
	if !rule.HostAddr.IsValid() {
		rule.HostAddr = netip.IPv4Unspecified()
	}
	rule.HostAddr = rule.HostAddr.Unmap()
	if rule.HostAddr.IsMulticast() {
		return rule, &ArgError{Field: "host_addr", Msg: "multicast address"}
	}
	if rule.HostPort == 0 {
		return rule, &ArgError{Field: "host_port", Msg: "must be 1-65535"}
	}
	ga := rule.GuestAddr.Unmap()
	if !ga.IsValid() || ga.IsUnspecified() {
		ga = r.cfg.Plan.Guest4
		if rule.HostAddr.Is6() && r.cfg.Plan.Guest6.IsValid() {
			ga = r.cfg.Plan.Guest6
		}
		if !ga.IsValid() {
			return rule, &ArgError{Field: "guest_addr", Msg: "no default guest address configured"}
		}
	}
	rule.GuestAddr = ga
	if msg := r.checkGuest(ga); msg != "" {
		return rule, &ArgError{Field: "guest_addr", Msg: msg}
	}
	if rule.GuestPort == 0 {
		return rule, &ArgError{Field: "guest_port", Msg: "must be 1-65535"}
	}
	return rule, nil
}

// checkGuest says what is wrong with a as a guest address, or "".
func (r *Registry) checkGuest(a netip.Addr) string {
	vnet, gw := r.cfg.Plan.Net4, r.cfg.Plan.Gateway4
	if a.Is6() {
		vnet, gw = r.cfg.Plan.Net6, r.cfg.Plan.Gateway6
	}
	switch {
	case a.Zone() != "":
		return "zoned address"
	case !vnet.IsValid():
		return "address family not enabled"
	case !vnet.Contains(a):
		return fmt.Sprintf("%v is outside the virtual network %v", a, vnet)
	case a == vnet.Addr():
		return fmt.Sprintf("%v is the network address", a)
	case a == gw:
		return fmt.Sprintf("%v is the gateway", a)
	case a.Is4() && a == r.cfg.Plan.Broadcast4():
		return fmt.Sprintf("%v is the broadcast address", a)
	case a.IsMulticast():
		return "multicast address"
	}
	return ""
}

// bind opens f's host socket: IPv4 only for an IPv4 address, IPv6 only for an
// IPv6 one (so 0.0.0.0:P and [::]:P are two forwards that can coexist).
func (f *forward) bind(ctx context.Context) error {
	network := f.Proto + "4"
	if f.HostAddr.Is6() {
		network = f.Proto + "6"
	}
	addr := netip.AddrPortFrom(f.HostAddr, f.HostPort).String()
	var lc net.ListenConfig
	if f.HostIfname != "" {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.BindToDevice(int(fd), f.HostIfname)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("bind to interface %s: %w", f.HostIfname, serr)
			}
			return nil
		}
	}
	if f.Proto == "tcp" {
		ln, err := lc.Listen(ctx, network, addr)
		if err != nil {
			return err
		}
		f.ln = ln
		return nil
	}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return err
	}
	f.pc = pc.(*net.UDPConn)
	return nil
}

// closeSocket closes f's host socket; safe to call more than once.
func (f *forward) closeSocket() {
	if f.ln != nil {
		f.ln.Close()
	}
	if f.pc != nil {
		f.pc.Close()
	}
}

// srcFor returns the source address a host client at client appears as inside
// the namespace when it talks to guest: itself, or (with its own port) the
// plan's host-loopback address for a loopback client, the guest alias for the
// host's own address the guest shares, and the gateway when its address cannot
// be routed back through the namespace's default route to us otherwise:
// loopback, link-local, unspecified, in the virtual network, or of the other
// family than guest.
func (r *Registry) srcFor(client netip.AddrPort, guest netip.Addr) netip.AddrPort {
	a := client.Addr().Unmap()
	plan := &r.cfg.Plan
	gw, lo, alias, host := plan.Gateway4, plan.HostLoopback4, plan.GuestAlias4, plan.HostAddr4
	if guest.Is6() {
		gw, lo, alias, host = plan.Gateway6, plan.HostLoopback6, plan.GuestAlias6, plan.HostAddr6
	}
	switch {
	case a.Is4() != guest.Is4():
		return netip.AddrPortFrom(gw, client.Port())
	case a.IsLoopback() && lo.IsValid():
		return netip.AddrPortFrom(lo, client.Port())
	case a == host && alias.IsValid():
		// The host's own address (pasta's --map-guest-addr).
		return netip.AddrPortFrom(alias, client.Port())
	case a.IsLoopback(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a.Zone() != "", plan.Virtual(a):
		return netip.AddrPortFrom(gw, client.Port())
	}
	return netip.AddrPortFrom(a, client.Port())
}

// logfUnlessDone logs unless ctx is done (errors caused by our own shutdown are not news).
func (r *Registry) logfUnlessDone(ctx context.Context, format string, args ...any) {
	if ctx.Err() == nil {
		r.logf(format, args...)
	}
}
