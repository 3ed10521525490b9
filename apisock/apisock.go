// Package apisock serves slirp4netns's QMP-like JSON API (--api-socket) on a
// unix socket: add_hostfwd, list_hostfwd and remove_hostfwd, byte for byte as
// slirp4netns 1.2 answers them (docs/api.md). It is a thin adapter: the
// forwards themselves live in a [Forwarder], in production a *portfwd.Registry.
//
// The wire format: one JSON request per connection, with or without a trailing
// newline, the client may half-close or not; one compact JSON reply with no
// trailing newline; then the server closes the connection.
//
// Only the user running usernet (and root) may use it: the socket is created
// with mode 0600, and each client's credentials (SO_PEERCRED) are checked.
// Idle clients cannot starve others: a request must arrive within
// ReadTimeout of the connect, and when all maxConns slots are taken a new
// client takes the slot of a client still silent, of the peer (process)
// holding the most slots; docs/api.md has the numbers.
//
// It owns the listening socket and one goroutine per request. It must not
// import stack or gVisor: it reaches forwards through [Forwarder] only.
package apisock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/portfwd"
)

// Forwarder is what the API manipulates. *portfwd.Registry satisfies it.
// Its methods are called concurrently, one call per API connection.
type Forwarder interface {
	// Add registers a forward and returns its ID (1, 2, 3…, never reused).
	// A *portfwd.ArgError names the bad request field; any other error is
	// reported as slirp4netns reports a bind failure.
	Add(ctx context.Context, r portfwd.Rule) (int, error)
	// List returns the forwards ordered by ID.
	List() []portfwd.Entry
	// Remove unregisters a forward; an unknown id is an error wrapping
	// portfwd.ErrNotFound.
	Remove(id int) error
}

// Config configures a Server.
type Config struct {
	// Path is the socket path, shorter than 108 bytes (sun_path with its NUL).
	Path string
	// Listener, when set, is the socket already bound at Path by Listen
	// (usernet binds it before entering its sandbox and carries the fd
	// across the exec). New then takes it over instead of binding.
	Listener *net.UnixListener
	// Forwarder executes the commands. Required.
	Forwarder Forwarder
	// ReadTimeout is how long a client has, from connecting, to send a whole
	// request (and then to read the reply). Zero = 5s. A client that sends
	// nothing is dropped without a reply; one that sent part of a request gets
	// "bad request: cannot parse JSON".
	ReadTimeout time.Duration
	// Policy, when set, serves add_rule, list_rules and remove_rule
	// (extra.go); KillDenied, when set, closes the live flows that the
	// rules now deny, for "kill_existing", and returns how many.
	Policy     Policy
	KillDenied func() int
	// Stats, when set, serves get_stats and list_connections.
	Stats Stats
	// Capture, when set, serves capture (capture.go).
	Capture Capturer
	// Logf logs failed commands (with the underlying error, which the wire
	// format has no room for), refused clients and accept errors. nil =
	// discard.
	Logf func(format string, args ...any)
	// AllowUIDs are the client uids served; nil = this process's real and
	// effective uids, and root (asked in New: under a seccomp filter that
	// refuses getuid, pass them). A client with another uid gets an error
	// reply and is closed.
	AllowUIDs []uint32
}

const (
	defaultReadTimeout = 5 * time.Second
	// maxConns bounds the connections served at once. A client beyond it
	// takes the slot of a silent one (evict), or is told "busy".
	maxConns = 256
	// maxPathLen is the longest socket path: sun_path is 108 bytes with its NUL.
	maxPathLen = 107
)

// Server serves the API on a unix socket.
type Server struct {
	cfg     Config
	logf    func(string, ...any)
	ln      *net.UnixListener
	running atomic.Bool
	wg      sync.WaitGroup // connection goroutines; Run waits for them

	captures atomic.Int32 // live capture streams (capture.go)
	allow    []uint32

	mu     sync.Mutex // guards conns, byPeer, seq
	conns  map[*conn]struct{}
	byPeer map[peer]int
	seq    uint64

	refusedLog rateLog       // refused clients
	refusing   chan struct{} // refused clients being answered (refuse)

	closeOnce sync.Once
	closeErr  error
}

// New makes a Server on cfg.Listener, or on a socket it binds at cfg.Path
// with Listen. The socket file exists from New until Run returns (or Close).
func New(cfg Config) (*Server, error) {
	if cfg.Forwarder == nil {
		return nil, errors.New("apisock: no Forwarder")
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = defaultReadTimeout
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = Listen(cfg.Path); err != nil {
			return nil, err
		}
	}
	// Close removes the socket file, also for a listener rebuilt from an
	// inherited fd (net.FileListener does not unlink by default).
	ln.SetUnlinkOnClose(true)
	s := &Server{cfg: cfg, logf: cfg.Logf, ln: ln, allow: cfg.AllowUIDs,
		conns: map[*conn]struct{}{}, byPeer: map[peer]int{}, refusing: make(chan struct{}, maxRefusing)}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	if s.allow == nil {
		s.allow = []uint32{uint32(os.Getuid()), uint32(os.Geteuid()), 0}
	}
	return s, nil
}

// Listen checks path, replaces a stale socket file there, and listens on it
// with mode 0600 from the start (only our user may connect: the API can open
// ports). It refuses a path that is not a socket, and a socket a running
// server still answers on.
func Listen(path string) (*net.UnixListener, error) {
	switch {
	case path == "":
		return nil, errors.New("api socket path is empty")
	case len(path) > maxPathLen:
		return nil, fmt.Errorf("api socket path %s is too long (%d bytes, at most %d)", path, len(path), maxPathLen)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener dups it
	// bind(2) gives the file the socket inode's mode less the umask: set
	// it first, so that the file never has another mode (no window, and no
	// chmod by path, which would follow a symlink put there meanwhile).
	// The umask would do too, but it is the whole process's.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, fmt.Errorf("api socket: fchmod: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("api socket: bind %s: %w", path, err)
	}
	testHookAfterBind(path)
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("api socket: listen: %w", err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("api socket: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// testHookAfterBind runs right after the socket file is made (tests look
// at its mode there).
var testHookAfterBind = func(string) {}

// removeStale removes the socket file at path if no server answers on it.
// slirp4netns unlinks whatever is there; we refuse to delete what is not a
// socket, or a socket that is still served (a second instance would steal it).
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("api socket path %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("api socket %s is in use by a running server", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("api socket: removing stale %w", err)
	}
	return nil
}

// Run serves until ctx ends, then closes the listener (which removes the
// socket file) and every open connection, and returns nil once every
// goroutine it started has exited. Call it once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("apisock: Run called twice")
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			s.logf("api socket: accept: %v", err)
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		delay = 0
		cn, reply := s.admit(c)
		if cn == nil {
			s.refuse(c, reply)
			continue
		}
		s.wg.Go(func() {
			defer s.release(cn)
			s.serve(ctx, cn)
		})
	}
	s.Close()
	s.wg.Wait()
	return nil
}

// refuse gives c its one error line and closes it, off the accept loop, a
// few at a time: beyond that, c is closed without a word.
func (s *Server) refuse(c *net.UnixConn, reply []byte) {
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	s.wg.Go(func() {
		defer func() { <-s.refusing }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(drainTimeout))
		if _, err := c.Write(reply); err != nil {
			return
		}
		// As serve does: what the client sent must be read before the
		// close, or the kernel resets the connection under the reply.
		c.CloseWrite()
		io.CopyN(io.Discard, c, maxDrain)
	})
}

// maxRefusing bounds the refused clients being answered at once.
const maxRefusing = 16

// peer is who a client is: its uid and process, as SO_PEERCRED says.
type peer struct {
	uid uint32
	pid int32
}

// conn is a client being served.
type conn struct {
	c    *net.UnixConn
	peer peer
	seq  uint64       // accept order
	busy atomic.Int32 // connWaiting, connHandling or connEvicted
}

const (
	connWaiting  = iota // no whole request yet: may be evicted
	connHandling        // its request is being carried out
	connEvicted         // closed to make room for another client
)

// admit registers a newly accepted client, or returns the reply it gets
// instead: a client of another user is refused; when all slots are taken,
// the client still waiting for its request of the peer holding the most
// slots (the oldest of them) is evicted; if none is waiting, "busy".
func (s *Server) admit(c *net.UnixConn) (*conn, []byte) {
	cred, err := peerCred(c)
	if err != nil {
		s.logf("api socket: client credentials: %v", err)
		return nil, errorReply(errPeer)
	}
	if !s.allowed(cred.Uid) {
		if n := s.refusedLog.allow(); n > 0 {
			s.logf("api socket: refused a client of uid %d (pid %d): only uids %v may use the API (%d refused in all)", cred.Uid, cred.Pid, s.allow, n)
		}
		return nil, errorReply(errPeer)
	}
	cn := &conn{c: c, peer: peer{uid: cred.Uid, pid: cred.Pid}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) >= maxConns {
		victim := s.victimLocked()
		if victim == nil {
			return nil, errorReply(errBusy)
		}
		s.removeLocked(victim)
		victim.c.Close() // its goroutine sees the read fail and leaves
	}
	s.seq++
	cn.seq = s.seq
	s.conns[cn] = struct{}{}
	s.byPeer[cn.peer]++
	return cn, nil
}

// victimLocked picks the client to evict, marked evicted, or nil.
func (s *Server) victimLocked() *conn {
	var best *conn
	for cn := range s.conns {
		if cn.busy.Load() != connWaiting {
			continue
		}
		if best == nil || s.byPeer[cn.peer] > s.byPeer[best.peer] ||
			(s.byPeer[cn.peer] == s.byPeer[best.peer] && cn.seq < best.seq) {
			best = cn
		}
	}
	if best == nil || !best.busy.CompareAndSwap(connWaiting, connEvicted) {
		return nil // it just got its request: let it be
	}
	return best
}

func (s *Server) removeLocked(cn *conn) {
	if _, ok := s.conns[cn]; !ok {
		return
	}
	delete(s.conns, cn)
	if s.byPeer[cn.peer]--; s.byPeer[cn.peer] == 0 {
		delete(s.byPeer, cn.peer)
	}
}

func (s *Server) release(cn *conn) {
	s.mu.Lock()
	s.removeLocked(cn)
	s.mu.Unlock()
}

// allowed reports whether a client of uid may use the API.
func (s *Server) allowed(uid uint32) bool {
	return slices.Contains(s.allow, uid)
}

// peerCred is c's peer's credentials, as the kernel recorded them at
// connect, in this process's user namespace (an unmapped uid, root's in a
// sandbox of its own among them, is the overflow uid).
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// rateLog lets a line through at most once a second, counting all calls.
type rateLog struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// allow counts one event and returns the count so far if a line may be
// written now, else 0.
func (r *rateLog) allow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if now := time.Now(); now.Sub(r.last) >= time.Second {
		r.last = now
		return r.n
	}
	return 0
}

// Close closes the listener and removes the socket file. Run calls it; call
// it yourself only for a Server that is never Run. Connections being served
// are closed by Run's ctx, not by Close.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		// A *net.UnixListener made by ListenUnix unlinks its path on Close.
		s.closeErr = s.ln.Close()
	})
	return s.closeErr
}

// serve answers the one request of cn and closes it.
func (s *Server) serve(ctx context.Context, cn *conn) {
	c := cn.c
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	req, err := readRequest(c)
	if ctx.Err() != nil || !cn.busy.CompareAndSwap(connWaiting, connHandling) {
		return // shutting down, or evicted for another client
	}
	if err == nil && s.cfg.Capture != nil && isCapture(req) {
		s.streamCapture(ctx, cn)
		return
	}
	reply := s.handle(ctx, req, err)
	if reply == nil {
		return // a client that never said anything gets nothing
	}
	c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
	if _, err := c.Write(reply); err != nil {
		if ctx.Err() == nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) { // the client left: nobody to tell
			s.logf("api socket: writing reply: %v", err)
		}
		return
	}
	// The reply is all there is: EOF for clients that read to the end
	// (rootlesskit's io.ReadAll). Closing with unread request bytes
	// queued (a too large message, anything after the JSON value) would
	// make the kernel reset the connection under the reply, so read and
	// drop what is left first, for a short while.
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(drainTimeout))
	io.CopyN(io.Discard, c, maxDrain)
}

const (
	// drainTimeout and maxDrain bound the reading of what a client sent
	// after its request, before the connection is closed.
	drainTimeout = 200 * time.Millisecond
	maxDrain     = 1 << 20
)
