package apisock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/netplan"
	"github.com/usernet/usernet/portfwd"
	"golang.org/x/sys/unix"
)

// The replies of slirp4netns 1.2.0 (commit 656041d4, libslirp 4.7.0) as
// observed with `printf '%s' REQ | nc -U -N` on its --api-socket.
const (
	wantID1         = `{"return":{"id":1}}`
	wantEmpty       = `{"return":{}}`
	wantParse       = `{"error":{"desc":"bad request: cannot parse JSON"}}`
	wantNotObject   = `{"error":{"desc":"bad request: json_object() failed"}}`
	wantNoExecute   = `{"error":{"desc":"bad request: no execute found"}}`
	wantUnknown     = `{"error":{"desc":"bad request: unknown execute"}}`
	wantTooLarge    = `{"error":{"desc":"bad request: too large message"}}`
	wantProto       = `{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}`
	wantHostAddr    = `{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}`
	wantHostPort    = `{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}`
	wantGuestAddr   = `{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}`
	wantGuestPort   = `{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}`
	wantAddFailed   = `{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}`
	wantRemoveID    = `{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}`
	wantList1       = `{"entries":[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_addr":"10.0.2.100","guest_port":80}]}`
	wantListEmpty   = `{"entries":[]}`
	wantRemoveOther = `{"error":{"desc":"bad request: remove_hostfwd: slirp_remove_hostfwd failed"}}`
)

func add(args string) string { return `{"execute":"add_hostfwd","arguments":{` + args + `}}` }

// entry18080 is the forward of wantList1.
var entry18080 = portfwd.Entry{ID: 1, Rule: portfwd.Rule{Proto: "tcp", HostAddr: netip.MustParseAddr("127.0.0.1"),
	HostPort: 18080, GuestAddr: netip.MustParseAddr("10.0.2.100"), GuestPort: 80}}

func TestGoldenReplies(t *testing.T) {
	tests := []struct {
		name     string
		req      string
		entries  []portfwd.Entry // the forwarder's state
		addErr   error           // what the forwarder's Add and Remove return
		want     string
		needsEOF bool // the request is not a complete JSON value: only a half-closing client gets an answer
	}{
		// Successes.
		{"add", add(`"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_port":80`), nil, nil, wantID1, false},
		{"add with empty addresses", add(`"proto":"tcp","host_addr":"","host_port":18083,"guest_addr":"","guest_port":83`), nil, nil, wantID1, false},
		{"add with a float port", add(`"proto":"udp","host_port":1e4,"guest_port":53.0`), nil, nil, wantID1, false},
		{"add, extra members ignored", add(`"proto":"tcp","host_port":18114,"guest_port":80,"extra":1`), nil, nil, wantID1, false},
		{"add IPv6 host (a superset of 1.2)", add(`"proto":"tcp","host_addr":"::1","host_port":18094,"guest_port":80`), nil, nil, wantID1, false},
		{"add, null addresses are defaults", add(`"proto":"tcp","host_addr":null,"host_port":1,"guest_addr":null,"guest_port":1`), nil, nil, wantID1, false},
		{"list", `{"execute":"list_hostfwd"}`, []portfwd.Entry{entry18080}, nil, wantList1, false},
		{"list empty", `{"execute":"list_hostfwd"}`, nil, nil, wantListEmpty, false},
		{"list with arguments", `{"execute":"list_hostfwd","arguments":5}`, nil, nil, wantListEmpty, false},
		{"remove", `{"execute":"remove_hostfwd","arguments":{"id":1}}`, []portfwd.Entry{entry18080}, nil, wantEmpty, false},
		{"remove 1.0", `{"execute":"remove_hostfwd","arguments":{"id":1.0}}`, []portfwd.Entry{entry18080}, nil, wantEmpty, false},
		// Framing.
		{"newline", "{\"execute\":\"list_hostfwd\"}\n", nil, nil, wantListEmpty, false},
		{"leading whitespace", "  \n{\"execute\":\"list_hostfwd\"}", nil, nil, wantListEmpty, false},
		{"trailing garbage", `{"execute":"list_hostfwd"}garbage`, nil, nil, wantListEmpty, false},
		{"second value ignored", `{"execute":"list_hostfwd"} {"execute":"foo"}`, nil, nil, wantListEmpty, false},
		// Envelope errors.
		{"garbage", "garbage", nil, nil, wantParse, false},
		{"badjson newline (slirp4netns's test)", "badjson\n", nil, nil, wantParse, false},
		{"empty", "", nil, nil, wantParse, true},
		{"truncated", `{"execute":`, nil, nil, wantParse, true},
		{"truncated string", `{"execute":"list_hos`, nil, nil, wantParse, true},
		{"duplicate key", `{"execute":"list_hostfwd","execute":"foo"}`, nil, nil, wantParse, false},
		{"duplicate nested key", add(`"proto":"tcp","proto":"udp","host_port":1,"guest_port":1`), nil, nil, wantParse, false},
		{"array", `[]`, nil, nil, wantNotObject, false},
		{"string", `"x"`, nil, nil, wantNotObject, false},
		{"number", `1`, nil, nil, wantNotObject, false},
		{"null", `null`, nil, nil, wantNotObject, false},
		{"no execute", `{}`, nil, nil, wantNoExecute, false},
		{"unexpected json (slirp4netns's test)", `{"unexpectedjson": 42}`, nil, nil, wantNoExecute, false},
		{"execute number", `{"execute":1}`, nil, nil, wantNoExecute, false},
		{"execute null", `{"execute":null}`, nil, nil, wantNoExecute, false},
		{"unknown execute", `{"execute":"foo"}`, nil, nil, wantUnknown, false},
		{"empty execute", `{"execute":""}`, nil, nil, wantUnknown, false},
		{"execute is case-sensitive", `{"execute":"LIST_HOSTFWD"}`, nil, nil, wantUnknown, false},
		{"keys are case-sensitive", `{"EXECUTE":"list_hostfwd"}`, nil, nil, wantNoExecute, false},
		{"argument keys are case-sensitive", add(`"PROTO":"tcp","host_port":1,"guest_port":1`), nil, nil, wantProto, false},
		// add_hostfwd arguments, in slirp4netns's order.
		{"proto sctp", add(`"proto":"sctp","host_port":18090,"guest_port":80`), nil, nil, wantProto, false},
		{"proto TCP", add(`"proto":"TCP","host_port":18091,"guest_port":80`), nil, nil, wantProto, false},
		{"proto number (crashes 1.2)", add(`"proto":5,"host_port":18092,"guest_port":80`), nil, nil, wantProto, false},
		{"proto missing (crashes 1.2)", add(`"host_port":18092,"guest_port":80`), nil, nil, wantProto, false},
		{"arguments not an object (crashes 1.2)", `{"execute":"add_hostfwd","arguments":5}`, nil, nil, wantProto, false},
		{"no arguments (crashes 1.2)", `{"execute":"add_hostfwd"}`, nil, nil, wantProto, false},
		{"proto checked first", add(`"proto":"x","host_addr":"bogus","host_port":0`), nil, nil, wantProto, false},
		{"host_addr bogus", add(`"proto":"tcp","host_addr":"bogus","host_port":18093,"guest_port":80`), nil, nil, wantHostAddr, false},
		{"host_addr with a space", add(`"proto":"tcp","host_addr":" 127.0.0.1","host_port":18111,"guest_port":80`), nil, nil, wantHostAddr, false},
		{"host_addr 127.1", add(`"proto":"tcp","host_addr":"127.1","host_port":18112,"guest_port":80`), nil, nil, wantHostAddr, false},
		{"host_addr number", add(`"proto":"tcp","host_addr":5,"host_port":18095,"guest_port":80`), nil, nil, wantHostAddr, false},
		{"host_port string", add(`"proto":"tcp","host_port":"18096","guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port 0", add(`"proto":"tcp","host_port":0,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port 65536", add(`"proto":"tcp","host_port":65536,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port -1", add(`"proto":"tcp","host_port":-1,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port fraction", add(`"proto":"tcp","host_port":18097.5,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port huge", add(`"proto":"tcp","host_port":1e400,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port missing", add(`"proto":"tcp","guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port true", add(`"proto":"tcp","host_port":true,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port null", add(`"proto":"tcp","host_port":null,"guest_port":80`), nil, nil, wantHostPort, false},
		{"host_port before guest_addr", add(`"proto":"tcp","host_port":0,"guest_addr":"bogus","guest_port":80`), nil, nil, wantHostPort, false},
		{"guest_addr bogus", add(`"proto":"tcp","host_port":18102,"guest_addr":"bogus","guest_port":80`), nil, nil, wantGuestAddr, false},
		{"guest_addr number", add(`"proto":"tcp","host_port":18106,"guest_addr":5,"guest_port":80`), nil, nil, wantGuestAddr, false},
		{"guest_port string", add(`"proto":"tcp","host_port":18098,"guest_port":"80"`), nil, nil, wantGuestPort, false},
		{"guest_port 0", add(`"proto":"tcp","host_port":18099,"guest_port":0`), nil, nil, wantGuestPort, false},
		{"guest_port 65536", add(`"proto":"tcp","host_port":18100,"guest_port":65536`), nil, nil, wantGuestPort, false},
		{"guest_port missing", add(`"proto":"tcp","host_port":18101`), nil, nil, wantGuestPort, false},
		// The forwarder's verdicts.
		{"forwarder: guest outside the network", add(`"proto":"tcp","host_port":18103,"guest_addr":"8.8.8.8","guest_port":80`), nil,
			fmt.Errorf("add: %w", &portfwd.ArgError{Field: "guest_addr"}), wantGuestAddr, false},
		{"forwarder: busy port", add(`"proto":"tcp","host_port":18106,"guest_port":80`), nil,
			&portfwd.BindError{Err: syscall.EADDRINUSE}, wantAddFailed, false},
		{"forwarder: duplicate", add(`"proto":"tcp","host_port":18106,"guest_port":80`), nil,
			&portfwd.DuplicateError{ID: 1}, wantAddFailed, false},
		{"forwarder: closed", add(`"proto":"tcp","host_port":18106,"guest_port":80`), nil,
			portfwd.ErrClosed, wantAddFailed, false},
		{"forwarder: ArgError of an unknown field", add(`"proto":"tcp","host_port":18106,"guest_port":80`), nil,
			&portfwd.ArgError{Field: "weird"}, wantAddFailed, false},
		// remove_hostfwd.
		{"remove unknown", `{"execute":"remove_hostfwd","arguments":{"id":99}}`, []portfwd.Entry{entry18080}, nil, wantRemoveID, false},
		{"remove string id", `{"execute":"remove_hostfwd","arguments":{"id":"1"}}`, []portfwd.Entry{entry18080}, nil, wantRemoveID, false},
		{"remove fractional id (1.2 truncates it)", `{"execute":"remove_hostfwd","arguments":{"id":1.5}}`, []portfwd.Entry{entry18080}, nil, wantRemoveID, false},
		{"remove id 0", `{"execute":"remove_hostfwd","arguments":{"id":0}}`, nil, nil, wantRemoveID, false},
		{"remove id -1", `{"execute":"remove_hostfwd","arguments":{"id":-1}}`, nil, nil, wantRemoveID, false},
		{"remove no id", `{"execute":"remove_hostfwd","arguments":{}}`, nil, nil, wantRemoveID, false},
		{"remove no arguments", `{"execute":"remove_hostfwd"}`, nil, nil, wantRemoveID, false},
		{"forwarder: remove fails", `{"execute":"remove_hostfwd","arguments":{"id":1}}`, []portfwd.Entry{entry18080},
			errors.New("some failure"), wantRemoveOther, false},
	}
	for _, halfClose := range []bool{true, false} {
		client := "rootlesskit-style (CloseWrite)"
		if !halfClose {
			client = "podman-style (no CloseWrite)"
		}
		t.Run(client, func(t *testing.T) {
			for _, tt := range tests {
				if tt.needsEOF && !halfClose {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					fwd := &fakeForwarder{entries: tt.entries, next: len(tt.entries), addErr: tt.addErr, removeErr: tt.addErr}
					s := startServer(t, Config{Forwarder: fwd})
					if got := call(t, s.cfg.Path, tt.req, halfClose); got != tt.want {
						t.Errorf("request %s\n got %s\nwant %s", tt.req, got, tt.want)
					}
				})
			}
		})
	}
}

func TestAddPassesTheRuleThrough(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		args string
		want portfwd.Rule
	}{
		{`"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_addr":"10.0.2.100","guest_port":80`,
			portfwd.Rule{Proto: "tcp", HostAddr: a("127.0.0.1"), HostPort: 18080, GuestAddr: a("10.0.2.100"), GuestPort: 80}},
		// podman sends "" for guest_addr; missing and "" are the defaults (zero).
		{`"proto":"udp","host_addr":"","host_port":5353,"guest_addr":"","guest_port":53`,
			portfwd.Rule{Proto: "udp", HostPort: 5353, GuestPort: 53}},
		{`"proto":"tcp","host_port":8.08e3,"guest_port":65535`,
			portfwd.Rule{Proto: "tcp", HostPort: 8080, GuestPort: 65535}},
		{`"proto":"tcp","host_addr":"::","host_port":1,"guest_addr":"fd00::100","guest_port":1`,
			portfwd.Rule{Proto: "tcp", HostAddr: a("::"), HostPort: 1, GuestAddr: a("fd00::100"), GuestPort: 1}},
	}
	for _, tt := range tests {
		fwd := &fakeForwarder{}
		s := startServer(t, Config{Forwarder: fwd})
		if got := call(t, s.cfg.Path, add(tt.args), true); got != wantID1 {
			t.Fatalf("add(%s) = %s; want %s", tt.args, got, wantID1)
		}
		if rules := fwd.Rules(); len(rules) != 1 || rules[0] != tt.want {
			t.Errorf("add(%s): forwarder got %+v; want [%+v]", tt.args, rules, tt.want)
		}
	}
}

func TestTooLargeMessage(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}})
	req := `{"execute":"list_hostfwd"}`
	// 4095 bytes is the most slirp4netns takes; 4096 is too large.
	fits := strings.Repeat(" ", maxRequest-1-len(req)) + req
	if got := call(t, s.cfg.Path, fits, true); got != wantListEmpty {
		t.Errorf("%d-byte request: got %s; want %s", len(fits), got, wantListEmpty)
	}
	tooBig := " " + fits
	if got := call(t, s.cfg.Path, tooBig, true); got != wantTooLarge {
		t.Errorf("%d-byte request: got %s; want %s", len(tooBig), got, wantTooLarge)
	}
	// A client that never stops (slirp4netns's test: cat /dev/zero | ncat -U).
	c, err := net.Dial("unix", s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	writeDone := make(chan struct{})
	go func() {
		defer close(writeDone)
		zeros := make([]byte, 64<<10)
		for {
			if _, err := c.Write(zeros); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if string(buf[:n]) != wantTooLarge {
		t.Errorf("endless request: got %q, %v; want %s", buf[:n], err, wantTooLarge)
	}
	c.Close()
	<-writeDone
}

func TestRequestInPieces(t *testing.T) {
	// A request split over several writes is read whole (slirp4netns reads once).
	s := startServer(t, Config{Forwarder: &fakeForwarder{}})
	c, err := net.Dial("unix", s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, piece := range []string{`{"exec`, `ute":"list_`, `hostfwd"}`} {
		if _, err := c.Write([]byte(piece)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // let each piece arrive alone; not an assertion
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if string(buf[:n]) != wantListEmpty {
		t.Fatalf("reply to a request in pieces = %q, %v; want %s", buf[:n], err, wantListEmpty)
	}
	if n, err := c.Read(buf); n != 0 || err == nil {
		t.Fatalf("after the reply: read %q, %v; want EOF (one reply, then close)", buf[:n], err)
	}
}

func TestSilentClientDoesNotBlockOthers(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}, ReadTimeout: time.Minute})
	silent, err := net.Dial("unix", s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("unix", s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	partial.Write([]byte(`{"execute":`))

	done := make(chan string, 1)
	go func() {
		c, err := net.Dial("unix", s.cfg.Path)
		if err != nil {
			done <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte(`{"execute":"list_hostfwd"}`))
		buf := make([]byte, 256)
		n, _ := c.Read(buf)
		done <- string(buf[:n])
	}()
	select {
	case got := <-done:
		if got != wantListEmpty {
			t.Fatalf("reply beside silent clients = %q; want %s", got, wantListEmpty)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply within 5s while another client stays silent (read timeout 1m)")
	}
}

func TestSilentClientIsDroppedAfterReadTimeout(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}, ReadTimeout: 200 * time.Millisecond})
	for _, tt := range []struct{ sent, want string }{
		{"", ""},                   // nothing said: nothing answered, just closed
		{"  \n", ""},               // whitespace is nothing too
		{`{"execute":`, wantParse}, // a partial request is a bad one
	} {
		c, err := net.Dial("unix", s.cfg.Path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(tt.sent))
		buf := make([]byte, 256)
		n, _ := c.Read(buf) // returns at the server's close, not at our 10s deadline
		c.Close()
		if string(buf[:n]) != tt.want {
			t.Errorf("client that sent %q and went quiet: got %q; want %q", tt.sent, buf[:n], tt.want)
		}
	}
}

func TestNewSocketModeIs0600(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}})
	fi, err := os.Stat(s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v; want a socket with 0600", fi.Mode())
	}
}

func TestNewReplacesStaleSocket(t *testing.T) {
	path := socketPath(t)
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // a server that died without cleaning up
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s := startServer(t, Config{Path: path, Forwarder: &fakeForwarder{}})
	if got := call(t, s.cfg.Path, `{"execute":"list_hostfwd"}`, true); got != wantListEmpty {
		t.Fatalf("reply on a replaced stale socket = %s; want %s", got, wantListEmpty)
	}
}

func TestNewRefusesLiveSocketAndNonSocket(t *testing.T) {
	live := startServer(t, Config{Forwarder: &fakeForwarder{}})
	if s, err := New(Config{Path: live.cfg.Path, Forwarder: &fakeForwarder{}}); err == nil {
		s.Close()
		t.Fatalf("New on a socket another server answers on succeeded; want an error")
	}
	if got := call(t, live.cfg.Path, `{"execute":"list_hostfwd"}`, true); got != wantListEmpty {
		t.Fatalf("the live server after a refused New: %s; want %s", got, wantListEmpty)
	}
	file := filepath.Join(t.TempDir(), "notasocket")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := New(Config{Path: file, Forwarder: &fakeForwarder{}}); err == nil {
		s.Close()
		t.Fatalf("New on a regular file succeeded; want an error")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("regular file after a refused New: %q, %v; want it untouched", b, err)
	}
}

func TestNewPathLength(t *testing.T) {
	dir := t.TempDir()
	pathOf := func(n int) string {
		p := filepath.Join(dir, "s")
		return p + strings.Repeat("x", n-len(p))
	}
	if len(pathOf(107)) != 107 {
		t.Fatalf("TempDir %s too long for this test", dir)
	}
	if s, err := New(Config{Path: pathOf(108), Forwarder: &fakeForwarder{}}); err == nil {
		s.Close()
		t.Errorf("New with a 108-byte path succeeded; want an error")
	}
	s, err := New(Config{Path: pathOf(107), Forwarder: &fakeForwarder{}})
	if err != nil {
		t.Fatalf("New with a 107-byte path: %v; want success", err)
	}
	s.Close()
	if _, err := New(Config{Path: "", Forwarder: &fakeForwarder{}}); err == nil {
		t.Errorf("New with an empty path succeeded; want an error")
	}
	if _, err := New(Config{Path: pathOf(50)}); err == nil {
		t.Errorf("New without a Forwarder succeeded; want an error")
	}
}

func TestRunRemovesSocketFileAndClosesConnections(t *testing.T) {
	checkNoLeaks(t)
	path := socketPath(t)
	s, err := New(Config{Path: path, Forwarder: &fakeForwarder{}, ReadTimeout: time.Minute, Logf: quietLogf(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if got := call(t, path, `{"execute":"list_hostfwd"}`, true); got != wantListEmpty {
		t.Fatalf("reply = %s; want %s", got, wantListEmpty)
	}
	silent, err := net.Dial("unix", path) // being served when Run stops
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(50 * time.Millisecond) // let Run accept it; the test holds either way
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after cancel (a silent client with a 1m read timeout was open)")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Run returned: %v; want it removed", err)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("silent client after Run returned: read %d, %v; want EOF", n, err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("second Run = nil; want an error")
	}
}

// nopDialer satisfies portfwd.Dialer for a Registry no client connects to.
type nopDialer struct{}

func (nopDialer) DialTCP(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
	return nil, errors.New("nop")
}
func (nopDialer) DialUDP(netip.AddrPort, netip.AddrPort) (net.Conn, error) {
	return nil, errors.New("nop")
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestWithPortfwdRegistry(t *testing.T) {
	checkNoLeaks(t)
	plan, err := netplan.Slirp(netip.MustParsePrefix("10.0.2.0/24"), false)
	if err != nil {
		t.Fatal(err)
	}
	reg := portfwd.New(portfwd.Config{Dialer: nopDialer{}, Plan: plan, Logf: quietLogf(t)})
	ctx, cancel := context.WithCancel(context.Background())
	regDone := make(chan error, 1)
	go func() { regDone <- reg.Run(ctx) }()
	defer func() { cancel(); <-regDone }()
	s := startServer(t, Config{Forwarder: reg})
	p := s.cfg.Path

	port := freePort(t)
	addReq := add(fmt.Sprintf(`"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_addr":"","guest_port":80`, port))
	if got := call(t, p, addReq, true); got != wantID1 {
		t.Fatalf("add = %s; want %s", got, wantID1)
	}
	wantList := fmt.Sprintf(`{"entries":[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_addr":"10.0.2.100","guest_port":80}]}`, port)
	if got := call(t, p, `{"execute":"list_hostfwd"}`, false); got != wantList {
		t.Fatalf("list =\n %s\nwant\n %s", got, wantList)
	}
	// The port is really bound: a second add of it fails as slirp4netns's does.
	if got := call(t, p, addReq, true); got != wantAddFailed {
		t.Fatalf("add of the same port again = %s; want %s", got, wantAddFailed)
	}
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyReq := add(fmt.Sprintf(`"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":80`, busy.Addr().(*net.TCPAddr).Port))
	if got := call(t, p, busyReq, true); got != wantAddFailed {
		t.Fatalf("add of a busy port = %s; want %s", got, wantAddFailed)
	}
	outside := add(fmt.Sprintf(`"proto":"tcp","host_port":%d,"guest_addr":"8.8.8.8","guest_port":80`, freePort(t)))
	if got := call(t, p, outside, true); got != wantGuestAddr {
		t.Fatalf("add to a guest outside the network = %s; want %s", got, wantGuestAddr)
	}
	if got := call(t, p, `{"execute":"remove_hostfwd","arguments":{"id":1}}`, true); got != wantEmpty {
		t.Fatalf("remove 1 = %s; want %s", got, wantEmpty)
	}
	if c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Fatalf("port %d still open after remove_hostfwd", port)
	}
	if got := call(t, p, `{"execute":"remove_hostfwd","arguments":{"id":1}}`, true); got != wantRemoveID {
		t.Fatalf("remove 1 again = %s; want %s", got, wantRemoveID)
	}
	// IDs are not reused: failed adds took none, the removed one stays taken.
	if got := call(t, p, addReq, true); got != `{"return":{"id":2}}` {
		t.Fatalf("add after remove = %s; want %s", got, `{"return":{"id":2}}`)
	}
	if got := call(t, p, `{"execute":"list_hostfwd"}`, true); !strings.Contains(got, `"id":2`) || strings.Contains(got, `"id":1`) {
		t.Fatalf("list after remove + add = %s; want only id 2", got)
	}
}

// TestSocketModeFromBind: the socket file is 0600 the moment it exists, not
// chmod-ed afterwards (a window, and chmod follows a symlink put there).
func TestSocketModeFromBind(t *testing.T) {
	old := unix.Umask(0) // the widest umask: nothing but the socket's own mode may narrow it
	defer unix.Umask(old)
	var mode os.FileMode
	var statErr error
	testHookAfterBind = func(path string) {
		fi, err := os.Lstat(path)
		statErr = err
		if err == nil {
			mode = fi.Mode()
		}
	}
	defer func() { testHookAfterBind = func(string) {} }()
	ln, err := Listen(socketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if statErr != nil || mode.Type() != os.ModeSocket || mode.Perm() != 0o600 {
		t.Fatalf("socket file right after bind: mode %v, %v; want a socket with 0600", mode, statErr)
	}
}

// TestPeerRefused: a client whose uid is not allowed gets one error line and
// the connection closes; the refusal is logged.
func TestPeerRefused(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	logf := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, fmt.Sprintf(format, a...))
	}
	fwd := &fakeForwarder{}
	s := startServer(t, Config{Forwarder: fwd, AllowUIDs: []uint32{uint32(os.Getuid()) + 4242}, Logf: logf})
	got := call(t, s.cfg.Path, `{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,"guest_port":80}}`, true)
	if want := `{"error":{"desc":"` + errPeer + `"}}`; got != want {
		t.Fatalf("reply to a client of another uid: %s; want %s", got, want)
	}
	if len(fwd.Rules()) != 0 {
		t.Fatalf("a refused client's request was carried out: %+v", fwd.Rules())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 1 || !strings.Contains(logged[0], fmt.Sprintf("refused a client of uid %d (pid %d)", os.Getuid(), os.Getpid())) {
		t.Fatalf("log: %q; want one line naming the uid and pid", logged)
	}
}

// TestIdleClientsDoNotStarveARequest: more silent clients than there are
// slots, then a request: it is answered at once (a silent client's slot is
// taken), and the silent clients that lost theirs see EOF without a reply.
func TestIdleClientsDoNotStarveARequest(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}, ReadTimeout: time.Minute})
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for range maxConns + 44 {
		c, err := net.Dial("unix", s.cfg.Path)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	start := time.Now()
	if got := call(t, s.cfg.Path, `{"execute":"list_hostfwd"}`, true); got != wantListEmpty {
		t.Fatalf("reply beside %d silent clients: %q; want %s", len(silent), got, wantListEmpty)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("reply beside %d silent clients after %v; want it at once", len(silent), d)
	}
	// The oldest silent clients made room: they are closed, without a reply.
	silent[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(silent[0]); len(b) != 0 || err != nil {
		t.Errorf("the oldest silent client: read %q, %v; want EOF without a reply", b, err)
	}
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	if n > maxConns {
		t.Errorf("%d connections held; want at most %d", n, maxConns)
	}
}

// TestBusyWhenAllSlotsHandleRequests: with every slot's request under way,
// a new client is told "busy" at once rather than left waiting.
func TestBusyWhenAllSlotsHandleRequests(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}})
	s.mu.Lock()
	for range maxConns {
		cn := &conn{c: nil, peer: peer{uid: 1, pid: 1}}
		cn.busy.Store(connHandling)
		s.conns[cn] = struct{}{}
		s.byPeer[cn.peer]++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		clear(s.conns)
		clear(s.byPeer)
		s.mu.Unlock()
	}()
	if got, want := call(t, s.cfg.Path, `{"execute":"list_hostfwd"}`, true), `{"error":{"desc":"`+errBusy+`"}}`; got != want {
		t.Fatalf("reply with every slot handling a request: %s; want %s", got, want)
	}
}
