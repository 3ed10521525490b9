// Package apisock serves slirp4netns's QMP-like JSON API (--api-socket) on a
// unix socket: add_hostfwd, list_hostfwd and remove_hostfwd, byte for byte as
// slirp4netns 1.2 answers them (docs/api.md). It is a thin adapter: the
// forwards themselves live in a [Forwarder], in production a *portfwd.Registry.
//
// The wire format: one JSON request per connection, with or without a trailing
// newline, the client may half-close or not; one compact JSON reply with no
// trailing newline; then the server closes the connection.
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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	// Logf logs failed commands (with the underlying error, which the wire
	// format has no room for) and accept errors. nil = discard.
	Logf func(format string, args ...any)
}

const (
	defaultReadTimeout = 5 * time.Second
	// maxConns bounds the connections served at once; further clients wait in
	// the listen backlog. Each connection lasts at most ReadTimeout.
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
	s := &Server{cfg: cfg, logf: cfg.Logf, ln: ln}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	return s, nil
}

// Listen checks path, replaces a stale socket file there, listens on it and
// makes the socket mode 0600 (only our user may connect: the API can open
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
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	// Between bind and chmod the socket has the umask's mode; the parent
	// directory (podman's and rootlesskit's are 0700) is what really guards it.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return ln, nil
}

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

	slots := make(chan struct{}, maxConns)
	var delay time.Duration
accept:
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break accept
		}
		c, err := s.ln.AcceptUnix()
		if err != nil {
			<-slots
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			s.logf("api socket: accept: %v", err)
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				break accept
			}
			continue
		}
		delay = 0
		s.wg.Go(func() {
			defer func() { <-slots }()
			s.serve(ctx, c)
		})
	}
	s.Close()
	s.wg.Wait()
	return nil
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

// serve answers the one request of c and closes it.
func (s *Server) serve(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	req, err := readRequest(c)
	if ctx.Err() != nil {
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
