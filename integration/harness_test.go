package integration

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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testContext is a context that ends at the test's deadline (minus a margin to report), or
// after d, whichever is first.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	if dl, ok := t.Deadline(); ok {
		var cancel2 context.CancelFunc
		ctx, cancel2 = context.WithDeadline(ctx, dl.Add(-5*time.Second))
		t.Cleanup(cancel2)
	}
	return ctx
}

// syncBuffer is a bytes.Buffer safe for a process's output and a test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a started process, waited for in the background.
type proc struct {
	name   string // for messages: the command line
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid after done
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: strings.Join(cmd.Args, " "), cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &p.stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to exit and returns its exit code (-1: killed by
// a signal), or fails the test.
func (p *proc) waitExit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s: still running after %v\nstderr:\n%s", p.name, d, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// target is a process in fresh user+net+mount namespaces, created by the unprivileged
// user the way rootlesskit and podman create theirs; usernet joins them.
type target struct {
	pid   int
	p     *proc
	stdin io.Closer
}

func newTarget(t *testing.T) *target {
	t.Helper()
	cmd := asUser(exec.Command("unshare", "--user", "--map-root-user", "--net", "--mount", "--", suite.helper, "target"))
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = suite.dir
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, w, err := os.Pipe() // not StdoutPipe: Wait, in startProc, would close it under the reader
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	p := startProc(t, cmd)
	w.Close()
	tg := &target{pid: cmd.Process.Pid, p: p, stdin: stdin}
	t.Cleanup(func() {
		stdin.Close()
		p.stop()
	})
	line := make(chan string, 1)
	go func() {
		defer out.Close()
		l, _ := readLine(out)
		line <- l
		io.Copy(io.Discard, out) // until the target exits
	}()
	select {
	case l := <-line:
		if l != "ready" {
			<-p.done
			t.Fatalf("%s: said %q, want \"ready\"; exit %v; stderr:\n%s", p.name, l, p.err, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not ready after 10s; stderr:\n%s", p.name, p.stderr.String())
	}
	return tg
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	c := make([]byte, 1)
	for {
		n, err := r.Read(c)
		if n == 1 {
			if c[0] == '\n' {
				return string(b), nil
			}
			b = append(b, c[0])
		}
		if err != nil {
			return string(b), err
		}
	}
}

// kill ends the target process (and with it, its namespaces once nothing else holds them).
func (tg *target) kill() {
	tg.stdin.Close()
	tg.p.cmd.Process.Kill()
	<-tg.p.done
}

// nsenter runs argv inside the target's user and net namespaces, as the unprivileged user
// (root inside), and returns its stdout. A non-zero exit fails the test.
func (tg *target) nsenter(t *testing.T, ctx context.Context, argv ...string) string {
	t.Helper()
	out, err := tg.tryNsenter(ctx, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (tg *target) tryNsenter(ctx context.Context, argv ...string) (string, error) {
	args := append([]string{"--user", "--net", "--preserve-credentials", "--target", strconv.Itoa(tg.pid), "--"}, argv...)
	cmd := asUser(exec.CommandContext(ctx, "nsenter", args...))
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = suite.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("in target %d: %s: %v\nstdout: %s\nstderr: %s",
			tg.pid, strings.Join(argv, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// helper runs a helper mode in the target and decodes its JSON result into res.
func (tg *target) helper(t *testing.T, ctx context.Context, res any, args ...string) {
	t.Helper()
	out := tg.nsenter(t, ctx, append([]string{suite.helper}, args...)...)
	if err := json.Unmarshal([]byte(out), res); err != nil {
		t.Fatalf("helper %s: output %q: %v", strings.Join(args, " "), out, err)
	}
}

// ip runs `ip -j ARGS` in the target and decodes its JSON output.
func (tg *target) ipJSON(t *testing.T, ctx context.Context, res any, args ...string) {
	t.Helper()
	out := tg.nsenter(t, ctx, append([]string{"ip", "-j"}, args...)...)
	if err := json.Unmarshal([]byte(out), res); err != nil {
		t.Fatalf("ip -j %s: output %q: %v", strings.Join(args, " "), out, err)
	}
}

// ipLink is one entry of `ip -j addr show`.
type ipLink struct {
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	MTU      int      `json:"mtu"`
	Address  string   `json:"address"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
		Tentative bool   `json:"tentative"`
	} `json:"addr_info"`
}

func (l ipLink) up() bool {
	for _, f := range l.Flags {
		if f == "UP" {
			return true
		}
	}
	return false
}

func (l ipLink) addrs() []string {
	var s []string
	for _, a := range l.AddrInfo {
		s = append(s, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
	}
	return s
}

func (tg *target) links(t *testing.T, ctx context.Context) map[string]ipLink {
	t.Helper()
	var links []ipLink
	tg.ipJSON(t, ctx, &links, "addr", "show")
	m := map[string]ipLink{}
	for _, l := range links {
		m[l.Name] = l
	}
	return m
}

// vnetHdr reports whether the tap named name is in IFF_VNET_HDR mode (`ip -d link`: the
// flag of the fd that attached last, i.e. usernet's).
func (tg *target) vnetHdr(t *testing.T, ctx context.Context, name string) bool {
	t.Helper()
	var links []struct {
		LinkInfo struct {
			Kind string `json:"info_kind"`
			Data struct {
				VnetHdr bool `json:"vnet_hdr"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	tg.ipJSON(t, ctx, &links, "-d", "link", "show", name)
	if len(links) != 1 || links[0].LinkInfo.Kind != "tun" {
		t.Fatalf("ip -d link show %s: %+v; want one tun device", name, links)
	}
	return links[0].LinkInfo.Data.VnetHdr
}

// ipRoute is one entry of `ip -j route show`.
type ipRoute struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
}

// usernetOpts describes one run of the binary under test against a target.
type usernetOpts struct {
	flags      []string   // e.g. "-c", "--mtu=65520"
	tap        string     // default "tap0"
	asRoot     bool       // run as root instead of the unprivileged user
	noReady    bool       // don't pass -r and don't wait for readiness
	noDNSFlag  bool       // don't add --dns-upstream (usernet only)
	positional []string   // instead of PID TAP
	extra      []*os.File // ExtraFiles after the ready fd's pipe (first one is fd 4)
	env        []string
	debug      bool // run the usernet_debug build (suite.debugBin), for its USERNET_DEBUG_* switches
}

// usernet is a running usernet (or slirp4netns).
type usernet struct {
	*proc
}

// startUsernet runs the binary under test for tg. Unless o.noReady, it passes -r 3 and
// returns once "1" was written there; it fails the test if the binary exits first or
// takes longer than 20 s. Cleanup stops it.
func startUsernet(t *testing.T, tg *target, o usernetOpts) *usernet {
	t.Helper()
	args := append([]string{}, o.flags...)
	var readyR, readyW *os.File
	if !o.noReady {
		var err error
		if readyR, readyW, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-r", "3")
	}
	if suite.isUsernet && !o.noDNSFlag && !hasFlag(o.flags, "--dns-upstream") {
		// Never the machine's resolver; this one has no server (DNS tests pass their own).
		args = append(args, "--dns-upstream", "127.0.0.1:1")
	}
	if o.positional != nil {
		args = append(args, o.positional...)
	} else {
		tap := o.tap
		if tap == "" {
			tap = "tap0"
		}
		args = append(args, strconv.Itoa(tg.pid), tap)
	}
	bin := suite.bin
	if o.debug {
		bin = suite.debugBin
	}
	cmd := exec.Command(bin, args...)
	if !o.asRoot {
		asUser(cmd)
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	cmd.Dir = suite.dir
	cmd.Env = append(os.Environ(), o.env...)
	if readyW != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, readyW)
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, o.extra...)
	u := &usernet{startProc(t, cmd)}
	if readyW != nil {
		readyW.Close()
	}
	t.Cleanup(func() {
		u.stop()
		if t.Failed() {
			t.Logf("%s\nstdout:\n%s\nstderr:\n%s", u.name, u.stdout.String(), u.stderr.String())
		}
	})
	if readyR != nil {
		defer readyR.Close()
		waitReady(t, u, readyR)
	}
	return u
}

// waitReady fails the test unless u writes "1" to its ready fd (read end
// readyR) and closes it within 20 s.
func waitReady(t *testing.T, u *usernet, readyR io.Reader) {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(readyR, 16)) // "1", then the writer closes
		got <- string(b)
	}()
	select {
	case s := <-got:
		if s != "1" {
			u.stop()
			t.Fatalf("%s: ready fd got %q, want \"1\"; exit: %v\nstderr:\n%s", u.name, s, u.err, u.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: ready fd silent after 20s\nstderr:\n%s", u.name, u.stderr.String())
	}
}

func hasFlag(flags []string, name string) bool {
	for _, f := range flags {
		if f == name || strings.HasPrefix(f, name+"=") {
			return true
		}
	}
	return false
}

// userDir makes a directory for the test that the unprivileged user owns (t.TempDir's
// parent is root's 0700 directory).
func userDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(suite.dir, strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, int(suite.uid), int(suite.gid)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// --- servers on the (private) host ---

// tracker owns a listener's connections and handler goroutines; t.Cleanup closes the
// listener and every connection, and waits for the handlers.
type tracker struct {
	mu    sync.Mutex
	conns map[io.Closer]bool
	wg    sync.WaitGroup
}

func newTracker(t *testing.T, ln io.Closer) *tracker {
	tr := &tracker{conns: map[io.Closer]bool{}}
	t.Cleanup(func() {
		ln.Close()
		tr.mu.Lock()
		for c := range tr.conns {
			c.Close()
		}
		tr.mu.Unlock()
		tr.wg.Wait()
	})
	return tr
}

// serveTCP accepts connections on ln and runs handle for each, until the test ends.
func serveTCP(t *testing.T, ln net.Listener, handle func(c *net.TCPConn)) {
	tr := newTracker(t, ln)
	tr.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.mu.Lock()
			tr.conns[c] = true
			tr.mu.Unlock()
			tr.wg.Go(func() {
				defer func() {
					c.Close()
					tr.mu.Lock()
					delete(tr.conns, c)
					tr.mu.Unlock()
				}()
				handle(c.(*net.TCPConn))
			})
		}
	})
}

// hashReply is what the hash server saw on one connection.
type hashReply struct {
	n   int64
	sha string
}

// hashServer serves on ln: it reads each connection until EOF, then writes back
// "N SHA256HEX\n" (so only a client that half-closes gets an answer) and closes. Each
// connection's result is also sent on the returned channel.
func hashServer(t *testing.T, ln net.Listener) <-chan hashReply {
	ch := make(chan hashReply, 16)
	serveTCP(t, ln, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return
		}
		r := hashReply{n, hex.EncodeToString(h.Sum(nil))}
		fmt.Fprintf(c, "%d %s\n", r.n, r.sha)
		select {
		case ch <- r:
		default:
		}
	})
	return ch
}

// echoServer serves on ln: it copies everything back and half-closes after the client's EOF.
func echoServer(t *testing.T, ln net.Listener) {
	serveTCP(t, ln, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		buf := make([]byte, 256<<10)
		if _, err := io.CopyBuffer(c, struct{ io.Reader }{c}, buf); err == nil {
			c.CloseWrite()
		}
	})
}

// udpEchoServer echoes every datagram on pc until the test ends.
func udpEchoServer(t *testing.T, pc net.PacketConn) {
	tr := newTracker(t, pc)
	tr.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
}

func listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen tcp %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listenUDP(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func port(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return strconv.Itoa(a.Port)
	case *net.UDPAddr:
		return strconv.Itoa(a.Port)
	}
	panic(fmt.Sprintf("port of %T", a))
}

// closedPort returns a loopback TCP port that nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln := listenTCP(t, "127.0.0.1:0")
	p := port(ln.Addr())
	ln.Close()
	return p
}

// inNetns runs fn on an OS thread switched into the network namespace at path, so that the
// sockets fn creates live there (sockets stay in the namespace they were created in). If
// the thread cannot switch back, it is left locked and the runtime discards it.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err)) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inetListenTCP listens on addr in the fake internet.
func inetListenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := inNetns(suite.inetNetns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen tcp %s in the fake internet: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func inetListenUDP(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := inNetns(suite.inetNetns, func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in the fake internet: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// checkTCPUp runs the half-close helper against a hash server and checks that the server
// got exactly what the client sent, and the client got the server's answer.
func checkTCPUp(t *testing.T, ctx context.Context, tg *target, addr string, n int64, got <-chan hashReply) {
	t.Helper()
	if err := tcpUp(t, ctx, tg, addr, n, got); err != nil {
		t.Fatal(err)
	}
}

// tcpUp is checkTCPUp's upload, its failure returned.
func tcpUp(t *testing.T, ctx context.Context, tg *target, addr string, n int64, got <-chan hashReply) error {
	t.Helper()
	var res TCPResult
	tg.helper(t, ctx, &res, "tcp-up", addr, strconv.FormatInt(n, 10))
	if res.Err != "" {
		return fmt.Errorf("tcp-up %s %d: error %s; want none (result %+v)", addr, n, res.Err, res)
	}
	want := fmt.Sprintf("%d %s\n", n, res.SentSHA)
	if res.Sent != n || res.Reply != want {
		return fmt.Errorf("tcp-up %s %d: sent %d, reply after half-close %q; want sent %d, reply %q", addr, n, res.Sent, res.Reply, n, want)
	}
	select {
	case r := <-got:
		if r.n != n || r.sha != res.SentSHA {
			return fmt.Errorf("tcp-up %s: server got %d bytes sha %s; want %d sha %s", addr, r.n, r.sha, n, res.SentSHA)
		}
	case <-ctx.Done():
		return fmt.Errorf("tcp-up %s: server saw no connection", addr)
	}
	return nil
}

// startPiped starts cmd with a pipe to its stdin (closing it ends a
// helper that serves until then) and one from its stdout (to wait for its
// "ready" line).
func startPiped(t *testing.T, cmd *exec.Cmd) (*proc, io.WriteCloser, *os.File) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	p := startProc(t, cmd)
	w.Close()
	return p, stdin, out
}
