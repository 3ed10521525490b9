package apisock

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/usernet/usernet/internal/testutil"

	"github.com/usernet/usernet/portfwd"
)

// fakeForwarder is a Forwarder with canned behaviour, for exact replies. It
// fills in defaults as portfwd does: host 0.0.0.0, guest 10.0.2.100.
type fakeForwarder struct {
	mu        sync.Mutex
	next      int
	entries   []portfwd.Entry
	addErr    error          // returned by Add if set
	removeErr error          // returned by Remove if set
	rules     []portfwd.Rule // every Rule Add was called with
}

var _ Forwarder = (*fakeForwarder)(nil)
var _ Forwarder = (*portfwd.Registry)(nil)

func (f *fakeForwarder) Add(_ context.Context, r portfwd.Rule) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, r)
	if f.addErr != nil {
		return 0, f.addErr
	}
	if !r.HostAddr.IsValid() {
		r.HostAddr = netip.IPv4Unspecified()
	}
	if !r.GuestAddr.IsValid() {
		r.GuestAddr = netip.MustParseAddr("10.0.2.100")
	}
	f.next++
	f.entries = append(f.entries, portfwd.Entry{ID: f.next, Rule: r})
	return f.next, nil
}

func (f *fakeForwarder) List() []portfwd.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]portfwd.Entry(nil), f.entries...)
}

func (f *fakeForwarder) Remove(id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.removeErr != nil {
		return f.removeErr
	}
	for i, e := range f.entries {
		if e.ID == id {
			f.entries = append(f.entries[:i], f.entries[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("remove %d: %w", id, portfwd.ErrNotFound)
}

func (f *fakeForwarder) Rules() []portfwd.Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]portfwd.Rule(nil), f.rules...)
}

// socketPath returns a fresh socket path in a short temporary directory.
func socketPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "api.sock")
}

// startServer runs a Server on a fresh socket until the test ends; cleanup
// checks that Run returns nil in time and that no goroutine outlives it.
func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	checkNoLeaks(t)
	if cfg.Path == "" {
		cfg.Path = socketPath(t)
	}
	if cfg.Logf == nil {
		cfg.Logf = quietLogf(t)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v; want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return 10s after its ctx was cancelled")
		}
	})
	return s
}

// call sends req as rootlesskit's callAPI does (write, CloseWrite, read to
// EOF) when halfClose is set, or as podman does (write, read, no
// half-close) when not, and returns the reply.
func call(t *testing.T, path, req string, halfClose bool) string {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write %q: %v", req, err)
	}
	if halfClose {
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
	}
	got, err := io.ReadAll(c) // the server closes after its reply
	if err != nil {
		t.Fatalf("request %q: reading the reply: %v (got %q)", req, err, got)
	}
	return string(got)
}

var (
	quietLogf    = testutil.QuietLogf
	checkNoLeaks = testutil.CheckNoLeaks
)
