package integration

// The API socket (--api-socket) and -p/--publish, end to end: forwards added over the real
// socket reach a server inside the namespace, which reports the peer address it sees; bad
// requests get their exact replies and break nothing; the socket file's mode and lifetime;
// and two figures (forwarded connections per second, time to add a forward).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func init() {
	helpers["fwd-server"] = helperFwdServer
	helpers["api-call"] = helperAPICall
}

// fwdGuestPort is where fwd-server listens inside the target (TCP and UDP, both families).
const fwdGuestPort = "8080"

// helperFwdServer runs inside the target: a TCP and a UDP server on [::]:PORT (dual stack).
// A TCP client's first byte picks what the connection does:
//
//	'p'  the server writes the peer address it sees ("198.51.100.254:40000\n") and closes
//	'h'  the server reads until EOF, then writes "N SHA256HEX\n" and closes
//	'e'  the server echoes everything, and half-closes after the client's EOF
//	'q'  the server writes "q" and closes
//
// A UDP datagram "peer" is answered with the peer address; any other is echoed.
// It prints "ready" once both listen, and exits when stdin closes. Usage: fwd-server PORT.
func helperFwdServer(args []string) (any, error) {
	if err := argN(args, 1, "fwd-server PORT"); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", ":"+args[0])
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", ":"+args[0])
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go fwdServeConn(c.(*net.TCPConn))
		}
	}()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "peer" {
				pc.WriteTo([]byte(from.String()), from)
			} else {
				pc.WriteTo(buf[:n], from)
			}
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return exitCode(0), nil
}

func fwdServeConn(c *net.TCPConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case 'p':
		fmt.Fprintf(c, "%s\n", c.RemoteAddr())
	case 'h':
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err == nil {
			fmt.Fprintf(c, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
		}
	case 'e':
		if _, err := io.CopyBuffer(c, struct{ io.Reader }{c}, make([]byte, 64<<10)); err == nil {
			c.CloseWrite()
		}
	case 'q':
		c.Write([]byte("q"))
	}
}

// APICallResult is what api-call reports.
type APICallResult struct {
	Reply string `json:"reply"`
	Err   string `json:"err,omitempty"`
}

// helperAPICall sends REQUEST to the API socket at PATH and reports the reply; run as some
// user, it shows what that user may do. Usage: api-call PATH REQUEST.
func helperAPICall(args []string) (any, error) {
	if err := argN(args, 2, "api-call PATH REQUEST"); err != nil {
		return nil, err
	}
	reply, err := apiExchange(args[0], args[1], helperTimeout)
	return APICallResult{Reply: reply, Err: errName(err)}, nil
}

// apiExchange is one API request: connect, write req, half-close, read the reply until EOF.
func apiExchange(path, req string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// --- test side ---

// apiCallAs sends req to the API socket at sock from a process with cred (api-call).
func apiCallAs(t *testing.T, sock, req string, cred *syscall.Credential) APICallResult {
	t.Helper()
	cmd := exec.CommandContext(testContext(t, time.Minute), suite.helper, "api-call", sock, req)
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = suite.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	var res APICallResult
	if err != nil || json.Unmarshal(out, &res) != nil {
		t.Fatalf("api-call as uid %d: %v, output %q", cred.Uid, err, out)
	}
	return res
}

// apiUserExchange is apiExchange made by the unprivileged user running usernet: a
// sandboxed usernet refuses root, which its user namespace does not map (docs/api.md).
func apiUserExchange(t *testing.T, sock, req string) (string, error) {
	t.Helper()
	res := apiCallAs(t, sock, req, userCred())
	if res.Err != "" {
		return res.Reply, errors.New(res.Err)
	}
	return res.Reply, nil
}

// userCred is the unprivileged user's, for apiCallAs.
func userCred() *syscall.Credential {
	return &syscall.Credential{Uid: suite.uid, Gid: suite.gid, Groups: []uint32{}}
}

// apiRun is a target with the binary under test serving it, with an API socket, and the
// fwd-server listening inside.
type apiRun struct {
	tg   *target
	un   *usernet
	sock string
}

// startAPIRun starts a target, the binary under test with --api-socket and flags, and
// fwd-server inside.
func startAPIRun(t *testing.T, flags ...string) *apiRun {
	t.Helper()
	needAPISocket(t, "this test")
	sock := filepath.Join(shortUserDir(t, "api"), "api.sock")
	tg := newTarget(t)
	startFwdServer(t, tg)
	un := startUsernet(t, tg, usernetOpts{flags: append([]string{"-c", "--api-socket", sock}, flags...)})
	return &apiRun{tg: tg, un: un, sock: sock}
}

// startFwdServer runs fwd-server in tg until the test ends.
func startFwdServer(t *testing.T, tg *target) {
	t.Helper()
	cmd := asUser(exec.Command("nsenter", "--user", "--net", "--preserve-credentials",
		"--target", strconv.Itoa(tg.pid), "--", suite.helper, "fwd-server", fwdGuestPort))
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = suite.dir
	p, stdin, out := startPiped(t, cmd)
	t.Cleanup(func() {
		stdin.Close()
		p.stop()
	})
	select {
	case <-lineWaiter(out, "ready"):
	case <-p.done:
		t.Fatalf("%s: exited before ready: %v\nstderr:\n%s", p.name, p.err, p.stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not ready after 10s\nstderr:\n%s", p.name, p.stderr.String())
	}
}

// call sends req and returns the reply; a failed exchange fails the test.
func (r *apiRun) call(t *testing.T, req string) string {
	t.Helper()
	reply, err := apiExchange(r.sock, req, 10*time.Second)
	if err != nil {
		t.Fatalf("API %s: %v (reply so far %q)", req, err, reply)
	}
	return reply
}

// expect sends req and checks the reply's exact bytes.
func (r *apiRun) expect(t *testing.T, req, want string) {
	t.Helper()
	if got := r.call(t, req); got != want {
		t.Fatalf("API %s:\n got %s\nwant %s", req, got, want)
	}
}

func addReq(proto, hostAddr string, hostPort int, guestAddr string) string {
	args := map[string]any{"proto": proto, "host_port": hostPort, "guest_port": 8080}
	if hostAddr != "" {
		args["host_addr"] = hostAddr
	}
	if guestAddr != "" {
		args["guest_addr"] = guestAddr
	}
	b, _ := json.Marshal(map[string]any{"execute": "add_hostfwd", "arguments": args})
	return string(b)
}

// add adds a forward to fwd-server and returns its id.
func (r *apiRun) add(t *testing.T, proto, hostAddr string, hostPort int, guestAddr string) int {
	t.Helper()
	req := addReq(proto, hostAddr, hostPort, guestAddr)
	reply := r.call(t, req)
	var v struct {
		Return *struct {
			ID int `json:"id"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply), &v); err != nil || v.Return == nil || v.Return.ID < 1 ||
		reply != fmt.Sprintf(`{"return":{"id":%d}}`, v.Return.ID) {
		t.Fatalf("API %s: reply %s; want {\"return\":{\"id\":N}}", req, reply)
	}
	return v.Return.ID
}

func (r *apiRun) remove(t *testing.T, id int) {
	t.Helper()
	r.expect(t, fmt.Sprintf(`{"execute":"remove_hostfwd","arguments":{"id":%d}}`, id), `{"return":{}}`)
}

func (r *apiRun) alive(t *testing.T) {
	t.Helper()
	if r.un.exited() {
		t.Fatalf("%s exited: %v\nstderr:\n%s", r.un.name, r.un.err, r.un.stderr.String())
	}
}

// tcpPeer connects to addr (a forward to fwd-server) and returns the client's local address
// and the peer address fwd-server saw.
func tcpPeer(addr string) (local, peer string, err error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("p")); err != nil {
		return "", "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", "", err
	}
	return c.LocalAddr().String(), strings.TrimSpace(string(b)), nil
}

// udpPeer sends "peer" to addr (retrying) and returns the client's local address and the
// peer address fwd-server saw.
func udpPeer(addr string) (local, peer string, err error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	buf := make([]byte, 256)
	for try := 0; try < 5; try++ {
		if _, err := c.Write([]byte("peer")); err != nil {
			return "", "", err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return c.LocalAddr().String(), string(buf[:n]), nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return "", "", err
		}
	}
	return "", "", errors.New("no reply after 5 tries")
}

// tcpHash sends n random bytes through addr to fwd-server's hash mode, half-closes, and
// checks the count and sha256 the server reports.
func tcpHash(addr string, n int64) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	tc := c.(*net.TCPConn)
	if _, err := tc.Write([]byte("h")); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tc, h), io.LimitReader(randomStream(), n)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := tc.CloseWrite(); err != nil {
		return err
	}
	b, err := io.ReadAll(tc)
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if want := fmt.Sprintf("%d %s\n", n, hex.EncodeToString(h.Sum(nil))); string(b) != want {
		return fmt.Errorf("server reported %q, want %q", b, want)
	}
	return nil
}

// udpClients runs clients concurrent UDP clients against addr, each sending rounds distinct
// datagrams from its own socket, and checks that each gets back exactly its own.
func udpClients(addr string, clients, rounds int) error {
	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() { errs[i] = udpClient(addr, i, rounds) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func udpClient(addr string, id, rounds int) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	prefix := fmt.Sprintf("client %d ", id)
	var sent []string
	buf := make([]byte, 2048)
	for r := range rounds {
		payload := fmt.Sprintf("%sround %d %d", prefix, r, time.Now().UnixNano())
		sent = append(sent, payload)
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			if _, err := c.Write([]byte(payload)); err != nil {
				return fmt.Errorf("client %d: %w", id, err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, err := c.Read(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						break
					}
					return fmt.Errorf("client %d: %w", id, err)
				}
				got := string(buf[:n])
				if got == payload {
					ok = true
					break
				}
				if !strings.HasPrefix(got, prefix) || !slices.Contains(sent, got) {
					return fmt.Errorf("client %d (%s) got %q: another client's datagram", id, c.LocalAddr(), got)
				}
				// A late echo of an earlier retransmission: skip it.
			}
		}
		if !ok {
			return fmt.Errorf("client %d: no echo of round %d after 5 tries", id, r)
		}
	}
	return nil
}

// dialErr is the errno name of a TCP connect to addr ("" when it connected).
func dialErr(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
	}
	return errName(err)
}

// inInet runs fn in the fake internet.
func inInet(t *testing.T, fn func() error) error {
	t.Helper()
	return inNetns(suite.inetNetns, fn)
}

// guestIPv6 waits for the target's global IPv6 address on tap0 (SLAAC) and returns it.
func guestIPv6(t *testing.T, ctx context.Context, tg *target) string {
	t.Helper()
	for {
		l := tg.links(t, ctx)["tap0"]
		for _, a := range l.AddrInfo {
			if a.Family == "inet6" && a.Scope == "global" && !a.Tentative {
				return a.Local
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no global IPv6 address on tap0: %v", l.addrs())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func hostPortStr(host string, p int) string { return net.JoinHostPort(host, strconv.Itoa(p)) }

// slirpUDPAnyLoopback: slirp4netns 1.2.0 (libslirp 4.7.0) forwards a loopback client's
// datagrams to a UDP forward on 0.0.0.0 but the replies never reach the client (a client in
// the fake internet, or a forward on 127.0.0.1, works).
const slirpUDPAnyLoopback = "slirp4netns 1.2.0: a loopback client of a UDP forward on 0.0.0.0 gets no reply"

// TestAPIForwards: forwards added over the API socket (the binary running as the
// unprivileged user) carry TCP and UDP to a server in the namespace, for IPv4 and IPv6 host
// addresses; list_hostfwd's bytes; remove_hostfwd closes the port at once; re-adding works.
func TestAPIForwards(t *testing.T) {
	setup(t)
	t.Parallel()
	r := startAPIRun(t, "--enable-ipv6")

	r.expect(t, `{"execute":"list_hostfwd"}`, `{"entries":[]}`)

	type fwd struct {
		proto, hostAddr, dialHost string
		port                      int
		v6                        bool
		id                        int
		noTraffic                 bool // slirp4netns: see slirpUDPAnyLoopback
	}
	fwds := []*fwd{
		{proto: "tcp", hostAddr: "127.0.0.1", dialHost: "127.0.0.1"},
		{proto: "udp", hostAddr: "127.0.0.1", dialHost: "127.0.0.1"},
		{proto: "tcp", hostAddr: "0.0.0.0", dialHost: "127.0.0.1"},
		{proto: "udp", hostAddr: "0.0.0.0", dialHost: "127.0.0.1"},
		{proto: "tcp", hostAddr: "::1", dialHost: "::1", v6: true},
		{proto: "udp", hostAddr: "::1", dialHost: "::1", v6: true},
		{proto: "tcp", hostAddr: "::", dialHost: "::1", v6: true},
		{proto: "udp", hostAddr: "::", dialHost: "::1", v6: true},
	}
	var entries []string
	nextID := 1
	for _, f := range fwds {
		name := f.proto + "-" + f.hostAddr
		t.Run("add-"+name, func(t *testing.T) {
			if f.v6 {
				usernetOnly(t, "slirp4netns 1.2.0 rejects IPv6 host_addr")
			}
			f.port = freePort(t, f.proto)
			// IPv4: the guest given explicitly (slirp4netns's default is 10.0.2.15, the
			// first DHCP address). IPv6: the default guest.
			guest := "10.0.2.100"
			if f.v6 {
				guest = ""
			}
			f.id = r.add(t, f.proto, f.hostAddr, f.port, guest)
			if f.id != nextID {
				t.Errorf("id %d, want %d", f.id, nextID)
			}
			nextID = f.id + 1
			entries = append(entries, fmt.Sprintf(`{"id":%d,"proto":"%s","host_addr":"%s","host_port":%d,"guest_addr":"10.0.2.100","guest_port":8080}`,
				f.id, f.proto, f.hostAddr, f.port))
			if f.proto == "udp" && f.hostAddr == "0.0.0.0" && !suite.isUsernet && os.Getenv(envStrict) != "1" {
				f.noTraffic = true
				t.Skip(slirpUDPAnyLoopback)
			}
			addr := hostPortStr(f.dialHost, f.port)
			var peer string
			var err error
			if f.proto == "tcp" {
				_, peer, err = tcpPeer(addr)
			} else {
				_, peer, err = udpPeer(addr)
			}
			if err != nil {
				t.Fatalf("%s %s through forward %d: %v", f.proto, addr, f.id, err)
			}
			if h, _, _ := net.SplitHostPort(peer); h != "10.0.2.2" {
				t.Errorf("%s %s: server saw peer %s, want 10.0.2.2:*", f.proto, addr, peer)
			}
		})
	}
	if t.Failed() {
		t.FailNow()
	}

	t.Run("list-bytes", func(t *testing.T) {
		r.expect(t, `{"execute":"list_hostfwd"}`, `{"entries":[`+strings.Join(entries, ",")+`]}`)
	})

	t.Run("tcp-2MiB-sha256", func(t *testing.T) {
		for _, f := range fwds {
			if f.proto == "tcp" && f.id != 0 && !f.noTraffic {
				if err := tcpHash(hostPortStr(f.dialHost, f.port), 2<<20); err != nil {
					t.Errorf("forward %d (%s:%d): %v", f.id, f.hostAddr, f.port, err)
				}
			}
		}
	})

	t.Run("udp-several-clients", func(t *testing.T) {
		for _, f := range fwds {
			if f.proto == "udp" && f.id != 0 && !f.noTraffic {
				if err := udpClients(hostPortStr(f.dialHost, f.port), 8, 10); err != nil {
					t.Errorf("forward %d (%s:%d): %v", f.id, f.hostAddr, f.port, err)
				}
			}
		}
	})

	t.Run("remove-and-readd", func(t *testing.T) {
		for _, f := range fwds {
			if f.id == 0 {
				continue
			}
			addr := hostPortStr(f.dialHost, f.port)
			r.remove(t, f.id)
			if f.proto == "tcp" {
				if e := dialErr(addr); e != "ECONNREFUSED" {
					t.Errorf("connect %s right after remove_hostfwd %d: %q, want ECONNREFUSED", addr, f.id, e)
				}
			} else {
				// The port is free at once: the test can bind it itself.
				pc, err := net.ListenPacket("udp", hostPortStr(f.hostAddr, f.port))
				if err != nil {
					t.Errorf("bind udp %s right after remove_hostfwd %d: %v", hostPortStr(f.hostAddr, f.port), f.id, err)
				} else {
					pc.Close()
				}
			}
			guest := "10.0.2.100"
			if f.v6 {
				guest = ""
			}
			id := r.add(t, f.proto, f.hostAddr, f.port, guest)
			if id != nextID {
				t.Errorf("re-add of %s %s:%d: id %d, want %d (ids are never reused)", f.proto, f.hostAddr, f.port, id, nextID)
			}
			nextID = id + 1
			if f.noTraffic {
				continue
			}
			var err error
			if f.proto == "tcp" {
				_, _, err = tcpPeer(addr)
			} else {
				_, _, err = udpPeer(addr)
			}
			if err != nil {
				t.Errorf("%s %s through re-added forward %d: %v", f.proto, addr, id, err)
			}
		}
		r.expect(t, fmt.Sprintf(`{"execute":"remove_hostfwd","arguments":{"id":%d}}`, fwds[0].id),
			`{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}`)
	})
	r.alive(t)
}

// TestAPIPublish: -p/--publish forwards work from the start, and list_hostfwd shows them.
func TestAPIPublish(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns has no -p/--publish")
	t.Parallel()
	ptcp, pudp, p6 := freePort(t, "tcp"), freePort(t, "udp"), freePort(t, "tcp")
	r := startAPIRun(t, "--enable-ipv6",
		"-p", fmt.Sprintf("127.0.0.1:%d:8080", ptcp),
		"--publish", fmt.Sprintf("%d:8080/udp", pudp),
		"-p", fmt.Sprintf("[::1]:%d:8080/tcp", p6))
	if err := tcpHash(hostPortStr("127.0.0.1", ptcp), 1<<20); err != nil {
		t.Errorf("-p 127.0.0.1:%d:8080: %v", ptcp, err)
	}
	if err := udpClients(hostPortStr("127.0.0.1", pudp), 4, 5); err != nil {
		t.Errorf("-p %d:8080/udp: %v", pudp, err)
	}
	if _, peer, err := tcpPeer(hostPortStr("::1", p6)); err != nil {
		t.Errorf("-p [::1]:%d:8080/tcp: %v", p6, err)
	} else if h, _, _ := net.SplitHostPort(peer); h != "10.0.2.2" {
		t.Errorf("-p [::1]:%d:8080/tcp: server saw %s, want 10.0.2.2:* (IPv6 host, IPv4 guest)", p6, peer)
	}
	want := fmt.Sprintf(`{"entries":[`+
		`{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_addr":"10.0.2.100","guest_port":8080},`+
		`{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":%d,"guest_addr":"10.0.2.100","guest_port":8080},`+
		`{"id":3,"proto":"tcp","host_addr":"::1","host_port":%d,"guest_addr":"10.0.2.100","guest_port":8080}]}`,
		ptcp, pudp, p6)
	r.expect(t, `{"execute":"list_hostfwd"}`, want)
	// A published forward is a forward like any other: the API removes it.
	r.remove(t, 1)
	if e := dialErr(hostPortStr("127.0.0.1", ptcp)); e != "ECONNREFUSED" {
		t.Errorf("connect to -p port after remove_hostfwd 1: %q, want ECONNREFUSED", e)
	}
	if id := r.add(t, "tcp", "127.0.0.1", ptcp, ""); id != 4 {
		t.Errorf("add after 3 published forwards: id %d, want 4", id)
	}
}

// TestAPIClientAddress: a client in the fake internet appears inside the namespace with its
// own address and port, over TCP and UDP, IPv4 and IPv6; a loopback client appears as the
// gateway with its own port.
func TestAPIClientAddress(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	r := startAPIRun(t, "--enable-ipv6")

	type tc struct {
		name, proto     string
		hostAddr, guest string
		inetDial        string // host address the fake-internet client dials
		inetWant        string // the peer address the server must see for it
		loDial, loWant  string
		v6              bool
	}
	cases := []*tc{
		{name: "tcp4", proto: "tcp", hostAddr: "0.0.0.0", guest: "10.0.2.100",
			inetDial: "198.51.100.1", inetWant: suite.inet4, loDial: "127.0.0.1", loWant: "10.0.2.2"},
		{name: "udp4", proto: "udp", hostAddr: "0.0.0.0", guest: "10.0.2.100",
			inetDial: "198.51.100.1", inetWant: suite.inet4, loDial: "127.0.0.1", loWant: "10.0.2.2"},
		{name: "tcp6", proto: "tcp", hostAddr: "::", v6: true,
			inetDial: "2001:db8::1", inetWant: suite.inet6, loDial: "::1", loWant: "fd00::2"},
		{name: "udp6", proto: "udp", hostAddr: "::", v6: true,
			inetDial: "2001:db8::1", inetWant: suite.inet6, loDial: "::1", loWant: "fd00::2"},
	}
	var guest6 string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.v6 {
				usernetOnly(t, "slirp4netns 1.2.0 rejects IPv6 host_addr and guest_addr")
				if guest6 == "" {
					guest6 = guestIPv6(t, ctx, r.tg)
					t.Logf("guest IPv6 address (SLAAC): %s", guest6)
				}
				c.guest = guest6
			}
			p := freePort(t, c.proto)
			id := r.add(t, c.proto, c.hostAddr, p, c.guest)
			peerOf := tcpPeer
			if c.proto == "udp" {
				peerOf = udpPeer
			}
			check := func(t *testing.T, who, dial, want string, fn func(func() error) error) {
				t.Helper()
				if who == "loopback" && c.proto == "udp" {
					usernetOnly(t, slirpUDPAnyLoopback)
				}
				addr := hostPortStr(dial, p)
				var local, peer string
				err := fn(func() (err error) {
					local, peer, err = peerOf(addr)
					return err
				})
				if err != nil {
					t.Errorf("%s client, %s %s through forward %d: %v", who, c.proto, addr, id, err)
					return
				}
				_, lport, _ := net.SplitHostPort(local)
				if wantPeer := hostPortStr(want, mustAtoi(lport)); peer != wantPeer {
					t.Errorf("%s client %s, %s %s: the server inside saw %s, want %s", who, local, c.proto, addr, peer, wantPeer)
				} else {
					t.Logf("%s client %s → %s: seen inside as %s", who, local, addr, peer)
				}
			}
			t.Run("fake-internet", func(t *testing.T) {
				check(t, "fake-internet", c.inetDial, c.inetWant, func(fn func() error) error { return inInet(t, fn) })
			})
			t.Run("loopback", func(t *testing.T) {
				check(t, "loopback", c.loDial, c.loWant, func(fn func() error) error { return fn() })
			})
		})
	}
	r.alive(t)
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

// errReply is the API's error reply for desc.
func errReply(desc string) string {
	return `{"error":{"desc":"bad request: ` + desc + `"}}`
}

// TestAPIBadInput: bad requests get their exact error replies while a forwarded connection
// stays up; the daemon keeps running and a new forward still works afterwards.
func TestAPIBadInput(t *testing.T) {
	setup(t)
	t.Parallel()
	r := startAPIRun(t)
	p := freePort(t, "tcp")
	r.add(t, "tcp", "127.0.0.1", p, "10.0.2.100")

	// The live connection: fwd-server's echo mode.
	live, err := net.DialTimeout("tcp", hostPortStr("127.0.0.1", p), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, err := live.Write([]byte("e")); err != nil {
		t.Fatal(err)
	}
	echo := func(msg string) {
		t.Helper()
		live.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(live, msg); err != nil {
			t.Fatalf("live connection: write: %v", err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(live, b); err != nil || string(b) != msg {
			t.Fatalf("live connection: echo %q, %v; want %q", b, err, msg)
		}
	}
	echo("before")

	big := `{"execute":"list_hostfwd","pad":"` + strings.Repeat("x", 5000-len(`{"execute":"list_hostfwd","pad":""}`)) + `"}`
	cases := []struct {
		name, req, want string
		usernetOnly     string
	}{
		{"garbage", "\x00\xffhello}{", errReply("cannot parse JSON"), ""},
		{"truncated", `{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_po`, errReply("cannot parse JSON"), ""},
		{"5000-bytes", big, errReply("too large message"), ""},
		{"host_port-string", fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":"%d","guest_port":8080}}`, freePort(t, "tcp")),
			errReply("add_hostfwd: bad arguments.host_port"), ""},
		{"port-70000", `{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":70000,"guest_port":8080}}`,
			errReply("add_hostfwd: bad arguments.host_port"), "slirp4netns wraps 70000 to 4464 and listens there"},
		{"guest-port-70000", fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":70000}}`, freePort(t, "tcp")),
			errReply("add_hostfwd: bad arguments.guest_port"), "slirp4netns wraps 70000"},
		{"missing-proto", fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"host_addr":"127.0.0.1","host_port":%d,"guest_port":8080}}`, freePort(t, "tcp")),
			errReply("add_hostfwd: bad arguments.proto"), "slirp4netns 1.2.0 crashes (NULL strcmp)"},
		{"duplicate", addReq("tcp", "127.0.0.1", p, "10.0.2.100"), errReply("add_hostfwd: slirp_add_hostfwd failed"), ""},
		{"remove-unknown-id", `{"execute":"remove_hostfwd","arguments":{"id":999}}`, errReply("remove_hostfwd: bad arguments.id"), ""},
		{"not-an-object", `[1,2]`, errReply("json_object() failed"), ""},
		{"unknown-execute", `{"execute":"ADD_HOSTFWD"}`, errReply("unknown execute"), ""},
		{"no-execute", `{"arguments":{}}`, errReply("no execute found"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.usernetOnly != "" {
				usernetOnly(t, c.usernetOnly)
			}
			reply, err := apiExchange(r.sock, c.req, 10*time.Second)
			if err != nil && errors.Is(err, syscall.ECONNRESET) && reply == c.want {
				// The server closed with part of the request unread, which makes the
				// kernel reset the connection after the reply (slirp4netns does the same).
				t.Logf("reply %s, then %v", reply, err)
			} else if err != nil || reply != c.want {
				t.Fatalf("API %.200s:\n got %s (%v)\nwant %s", c.req, reply, err, c.want)
			}
			r.alive(t)
			echo("after " + c.name)
		})
	}

	t.Run("silent-client-delays-nobody", func(t *testing.T) {
		usernetOnly(t, "slirp4netns reads the API synchronously: a silent client stalls it")
		silent, err := net.Dial("unix", r.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		start := time.Now()
		reply, err := apiExchange(r.sock, `{"execute":"list_hostfwd"}`, 10*time.Second)
		d := time.Since(start)
		if err != nil || !strings.HasPrefix(reply, `{"entries":[`) {
			t.Fatalf("list_hostfwd beside a silent client: %q, %v", reply, err)
		}
		t.Logf("reply beside a silent client after %v", d)
		if d > time.Second { // the read timeout is 5 s
			t.Errorf("reply beside a silent client took %v; a silent client must not delay others (read timeout 5s)", d)
		}
		// The silent client is dropped without a reply once its read timeout passes.
		silent.SetReadDeadline(time.Now().Add(15 * time.Second))
		start = time.Now()
		b, err := io.ReadAll(silent)
		if err != nil || len(b) != 0 {
			t.Errorf("silent client: read %q, %v; want EOF without a reply", b, err)
		}
		t.Logf("silent client dropped after %v", time.Since(start))
	})

	// 200 clients at once, every silentEvery-th of which sends nothing (usernet only); the
	// others send a mix of good and bad requests. usernet serves 256 connections at once
	// (more silent ones lose their slot to newcomers: TestAPIIdleClients), so nobody waits
	// for a silent one's 5 s read timeout (asserted with 20 silent clients; logged with 40).
	t.Run("200-concurrent-20-silent", func(t *testing.T) { concurrentClients(t, r, p, 10, 2500*time.Millisecond, echo) })
	t.Run("200-concurrent-40-silent", func(t *testing.T) { concurrentClients(t, r, p, 5, 0, echo) })

	t.Run("still-works", func(t *testing.T) {
		r.alive(t)
		echo("at the end")
		p2 := freePort(t, "tcp")
		r.add(t, "tcp", "127.0.0.1", p2, "10.0.2.100")
		if err := tcpHash(hostPortStr("127.0.0.1", p2), 256<<10); err != nil {
			t.Errorf("new forward after bad input: %v", err)
		}
	})
}

// concurrentClients: see TestAPIBadInput. maxWait > 0: the last answered client must have
// its reply within maxWait.
func concurrentClients(t *testing.T, r *apiRun, p, silentEvery int, maxWait time.Duration, echo func(string)) {
	const n = 200
	silentToo := suite.isUsernet || os.Getenv(envStrict) == "1"
	reqs := []struct{ req, want string }{
		{`{"execute":"list_hostfwd"}`, `{"entries":[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":` + strconv.Itoa(p) + `,"guest_addr":"10.0.2.100","guest_port":8080}]}`},
		{`{"execute":"nope"}`, errReply("unknown execute")},
		{`not json`, errReply("cannot parse JSON")},
		{addReq("tcp", "127.0.0.1", p, "10.0.2.100"), errReply("add_hostfwd: slirp_add_hostfwd failed")},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var silentN, answered int
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		silent := silentToo && i%silentEvery == 0
		if silent {
			silentN++
		}
		wg.Go(func() {
			fail := func(format string, a ...any) {
				mu.Lock()
				defer mu.Unlock()
				if len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("client %d: ", i)+fmt.Sprintf(format, a...))
				}
			}
			var c net.Conn
			var err error
			for try := 0; ; try++ { // a full listen backlog is EAGAIN for a unix socket
				c, err = net.DialTimeout("unix", r.sock, 10*time.Second)
				if err == nil || !errors.Is(err, syscall.EAGAIN) || try == 100 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				fail("connect: %v", err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if silent {
				b, err := io.ReadAll(c)
				if len(b) != 0 || err != nil {
					fail("silent: got %q, %v; want EOF without a reply", b, err)
				}
				return
			}
			rq := reqs[i%len(reqs)]
			if _, err := io.WriteString(c, rq.req); err != nil {
				fail("write: %v", err)
				return
			}
			c.(*net.UnixConn).CloseWrite()
			b, err := io.ReadAll(c)
			d := time.Since(start)
			mu.Lock()
			slowest = max(slowest, d)
			answered++
			mu.Unlock()
			if err != nil || string(b) != rq.want {
				fail("%s: got %q, %v; want %s", rq.req, b, err, rq.want)
			}
		})
	}
	wg.Wait()
	t.Logf("%d clients (%d silent): %d answered, the last after %v; all done after %v",
		n, silentN, answered, slowest, time.Since(start))
	if len(failures) > 0 {
		t.Errorf("%s", strings.Join(failures, "\n"))
	}
	if maxWait > 0 && silentN < 32 && slowest > maxWait {
		t.Errorf("with %d silent clients (fewer than the 32 served at once) the last reply came after %v; want within %v (silent clients' read timeout: 5s)",
			silentN, slowest, maxWait)
	}
	r.alive(t)
	echo("after 200 clients")
}

// TestAPIIdleClients: 300 clients that connect and send nothing (more than the 256 slots)
// do not delay a request from another process: it is answered at once; the silent clients
// that lost their slot see EOF without a reply. slirp4netns reads synchronously: skipped.
func TestAPIIdleClients(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns reads the API synchronously: one silent client stalls it")
	t.Parallel()
	r := startAPIRun(t)
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for i := range 300 {
		c, err := net.DialTimeout("unix", r.sock, 10*time.Second)
		if err != nil {
			t.Fatalf("silent client %d: %v", i, err)
		}
		silent = append(silent, c)
	}
	for _, who := range []struct {
		name string
		cred *syscall.Credential
	}{{"the user", userCred()}, {"root", &syscall.Credential{}}} {
		start := time.Now()
		res := apiCallAs(t, r.sock, `{"execute":"list_hostfwd"}`, who.cred)
		d := time.Since(start)
		t.Logf("list_hostfwd as %s beside 300 silent clients: %+v after %v (a process started for it)", who.name, res, d)
		if res.Reply != `{"entries":[]}` {
			t.Errorf("list_hostfwd as %s beside 300 silent clients: %+v; want {\"entries\":[]}", who.name, res)
		}
		if d > 2*time.Second { // the silent clients' read timeout is 5 s
			t.Errorf("list_hostfwd as %s beside 300 silent clients took %v; want it at once", who.name, d)
		}
	}
	silent[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(silent[0]); len(b) != 0 || err != nil {
		t.Errorf("the oldest silent client: read %q, %v; want EOF without a reply", b, err)
	}
	r.alive(t)
}

// TestAPIPeerRefused: a client of another user who can reach the socket (its mode opened
// up after the start) is refused with one error line, and usernet logs it; its request is
// not carried out. slirp4netns checks no credentials: skipped.
func TestAPIPeerRefused(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns checks no credentials")
	t.Parallel()
	r := startAPIRun(t)
	if err := os.Chmod(filepath.Dir(r.sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(r.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	p := freePort(t, "tcp")
	res := apiCallAs(t, r.sock, addReq("tcp", "127.0.0.1", p, "10.0.2.100"), &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}})
	want := `{"error":{"desc":"permission denied: only the user running usernet may use this API socket"}}`
	if res.Reply != want || res.Err != "" {
		t.Errorf("add_hostfwd as uid 65534: %+v; want reply %s", res, want)
	}
	if got := r.call(t, `{"execute":"list_hostfwd"}`); got != `{"entries":[]}` {
		t.Errorf("list_hostfwd after the refused add: %s; want no forward", got)
	}
	for end := time.Now().Add(5 * time.Second); !strings.Contains(r.un.stderr.String(), "refused a client of uid 65534"); {
		if time.Now().After(end) {
			t.Errorf("stderr has no line about the refused client:\n%s", r.un.stderr.String())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAPISocketFile: the socket is 0600 and owned by the user running usernet, who can use
// it while another user cannot; it is removed after SIGTERM; a path of 108 bytes or more is
// a clear error and exit status 1.
func TestAPISocketFile(t *testing.T) {
	setup(t)
	t.Parallel()
	needAPISocket(t, "this test")
	t.Run("mode-owner-removal", func(t *testing.T) {
		t.Parallel()
		dir := shortUserDir(t, "api")
		if err := os.Chmod(dir, 0o755); err != nil { // so that only the socket's mode keeps others out
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "api.sock")
		tg := newTarget(t)
		un := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--api-socket", sock}})
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatalf("after ready: %v", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Type() != os.ModeSocket || st.Uid != suite.uid {
			t.Errorf("%s: mode %v, owner %d; want a socket owned by %d", sock, fi.Mode(), st.Uid, suite.uid)
		}
		t.Run("mode-0600", func(t *testing.T) {
			usernetOnly(t, "slirp4netns leaves the umask's mode")
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", sock, fi.Mode().Perm())
			}
		})
		call := func(cred *syscall.Credential) APICallResult {
			return apiCallAs(t, sock, `{"execute":"list_hostfwd"}`, cred)
		}
		if res := call(&syscall.Credential{Uid: suite.uid, Gid: suite.gid, Groups: []uint32{}}); res.Reply != `{"entries":[]}` || res.Err != "" {
			t.Errorf("list_hostfwd as %s (the user running the daemon): %+v; want {\"entries\":[]}", testUser, res)
		}
		t.Run("other-user-refused", func(t *testing.T) {
			usernetOnly(t, "slirp4netns leaves the umask's mode")
			if res := call(&syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}); res.Err != "EACCES" {
				t.Errorf("list_hostfwd as uid 65534: %+v; want EACCES", res)
			}
		})
		un.cmd.Process.Signal(syscall.SIGTERM)
		code := un.waitExit(t, 10*time.Second)
		t.Logf("exit status after SIGTERM: %d", code)
		usernetOnly(t, "slirp4netns 1.2.0 dies of SIGTERM and leaves the socket file")
		if code != 0 {
			t.Errorf("exit status after SIGTERM: %d, want 0", code)
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after SIGTERM and exit: %v; want it removed", sock, err)
		}
	})
	t.Run("path-108-bytes", func(t *testing.T) {
		t.Parallel()
		dir := shortUserDir(t, "api")
		sock := filepath.Join(dir, strings.Repeat("s", 108-len(dir)-1))
		if len(sock) != 108 {
			t.Fatalf("path of %d bytes", len(sock))
		}
		tg := newTarget(t)
		cmd := asUser(exec.Command(suite.bin, "-c", "--api-socket", sock, strconv.Itoa(tg.pid), "tap0"))
		cmd.Dir = suite.dir
		p := startProc(t, cmd)
		t.Cleanup(p.stop)
		code := p.waitExit(t, 10*time.Second)
		stderr := p.stderr.String()
		t.Logf("exit %d, stderr:\n%s", code, stderr)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		if suite.isUsernet {
			if l := firstLine(stderr); !strings.Contains(l, sock) || !strings.Contains(l, "too long") {
				t.Errorf("first line of stderr %q; want the path and \"too long\"", l)
			}
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v; want no file", sock, err)
		}
	})
}

// TestAPIMeasure logs two figures, never asserted: forwarded TCP connections per second
// (connect, one byte each way, close) and the time add_hostfwd takes (median of 20). Not
// parallel, so that other tests do not skew it.
func TestAPIMeasure(t *testing.T) {
	setup(t)
	r := startAPIRun(t)
	p := freePort(t, "tcp")
	r.add(t, "tcp", "127.0.0.1", p, "10.0.2.100")
	addr := hostPortStr("127.0.0.1", p)

	oneConn := func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("q")); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "q" {
			err = fmt.Errorf("reply %q, want \"q\"", b)
		}
		return err
	}
	for _, workers := range []int{1, 8} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		count, errs := 0, 0
		var firstErr error
		start := time.Now()
		end := start.Add(2 * time.Second)
		for range workers {
			wg.Go(func() {
				for time.Now().Before(end) {
					err := oneConn()
					mu.Lock()
					if err != nil {
						errs++
						if firstErr == nil {
							firstErr = err
						}
					} else {
						count++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		d := time.Since(start)
		t.Logf("forwarded TCP connections (connect, 1 byte each way, close), %d client(s): %d in %v = %.0f/s, %d errors (first: %v)",
			workers, count, d.Round(time.Millisecond), float64(count)/d.Seconds(), errs, firstErr)
		if count == 0 {
			t.Errorf("no connection through the forward succeeded: %v", firstErr)
		}
	}

	var ds []time.Duration
	for range 20 {
		hp := freePort(t, "tcp")
		start := time.Now()
		id := r.add(t, "tcp", "127.0.0.1", hp, "10.0.2.100")
		ds = append(ds, time.Since(start))
		r.remove(t, id)
	}
	slices.Sort(ds)
	t.Logf("add_hostfwd over the API socket: median %v, min %v, max %v (20 adds)", ds[len(ds)/2], ds[0], ds[len(ds)-1])
	var buf bytes.Buffer
	fmt.Fprint(&buf, r.call(t, `{"execute":"list_hostfwd"}`))
	if !strings.Contains(buf.String(), `"id":1,`) {
		t.Errorf("list_hostfwd after the measurements: %s", buf.String())
	}
}
