package integration

// Shared pieces of the real-client tests (clients_test.go): helper modes that run inside
// rootlesskit's namespaces, subordinate IDs for the test user, and process tracking.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func init() {
	helpers["serve"] = helperServe
	helpers["resolve"] = helperResolve
}

// helperServe is the command rootlesskit runs in its namespaces: a TCP echo server and a UDP
// echo server on 0.0.0.0:PORT for each PORT. It prints "ready" once all listen, and exits 0
// when its stdin closes (the test ends it that way, and rootlesskit exits with it).
func helperServe(args []string) (any, error) {
	if len(args) == 0 {
		return nil, errors.New("usage: serve PORT...")
	}
	for _, p := range args {
		ln, err := net.Listen("tcp4", "0.0.0.0:"+p)
		if err != nil {
			return nil, err
		}
		pc, err := net.ListenPacket("udp4", "0.0.0.0:"+p)
		if err != nil {
			return nil, err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(2 * time.Minute))
					if _, err := io.CopyBuffer(c, struct{ io.Reader }{c}, make([]byte, 256<<10)); err == nil {
						c.(*net.TCPConn).CloseWrite()
					}
				}()
			}
		}()
		go func() {
			buf := make([]byte, 65535)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return exitCode(0), nil
}

// ResolveResult is what the resolve helper reports.
type ResolveResult struct {
	ResolvNS []string `json:"resolv_nameservers"`
	Addrs    []string `json:"addrs"`
	Err      string   `json:"err,omitempty"`
}

// helperResolve resolves NAME the way a program in the namespace would: with the
// nameservers of the /etc/resolv.conf it sees. Usage: resolve NAME.
func helperResolve(args []string) (any, error) {
	if err := argN(args, 1, "resolve NAME"); err != nil {
		return nil, err
	}
	var res ResolveResult
	res.ResolvNS, res.Addrs, res.Err = lookupAsNamespace(args[0])
	return res, nil
}

// needCommands skips t (fails it with USERNET_REQUIRE_NS=1: test.sh installs them) when a
// program it drives is not installed.
func needCommands(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv(envRequireNS) == "1" {
				t.Fatalf("%s is not installed (test.sh installs it): %v", n, err)
			}
			t.Skipf("%s is not installed (test.sh installs it)", n)
		}
	}
}

var subIDs struct {
	once sync.Once
	err  error
}

// ensureSubIDs gives the test user 65536 subordinate UIDs and GIDs in /etc/subuid and
// /etc/subgid, as an administrator does for rootless containers (rootlesskit and podman
// map them with newuidmap/newgidmap). An existing entry is kept.
func ensureSubIDs(t *testing.T) {
	t.Helper()
	subIDs.once.Do(func() {
		for _, f := range []struct{ file, flag string }{{"/etc/subuid", "--add-subuids"}, {"/etc/subgid", "--add-subgids"}} {
			start, has, err := subIDStart(f.file)
			if err != nil {
				subIDs.err = err
				return
			}
			if has {
				continue
			}
			r := fmt.Sprintf("%d-%d", start, start+65535)
			if out, err := exec.Command("usermod", f.flag, r, testUser).CombinedOutput(); err != nil {
				subIDs.err = fmt.Errorf("usermod %s %s %s: %v: %s", f.flag, r, testUser, err, out)
				return
			}
		}
	})
	if subIDs.err != nil {
		t.Fatal(subIDs.err)
	}
}

// subIDStart reads a subordinate ID file: whether the test user has an entry, and else the
// first ID (≥ 100000) after every range in it.
func subIDStart(file string) (start uint64, has bool, err error) {
	start = 100000
	b, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return 0, false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(l), ":")
		if len(f) != 3 {
			continue
		}
		if f[0] == testUser || f[0] == strconv.FormatUint(uint64(suite.uid), 10) {
			return 0, true, nil
		}
		s, err1 := strconv.ParseUint(f[1], 10, 32)
		n, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 == nil && err2 == nil && s+n > start {
			start = s + n
		}
	}
	return start, false, nil
}

// shortUserDir is userDir with a short name: unix socket paths (rootlesskit's api.sock,
// podman's) must stay under 108 bytes.
func shortUserDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp(suite.dir, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, int(suite.uid), int(suite.gid)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// freePort returns a port of 127.0.0.1 that nothing listens on for network ("tcp", "udp").
func freePort(t *testing.T, network string) int {
	t.Helper()
	var a net.Addr
	if network == "udp" {
		pc := listenUDP(t, "127.0.0.1:0")
		a = pc.LocalAddr()
		pc.Close()
	} else {
		ln := listenTCP(t, "127.0.0.1:0")
		a = ln.Addr()
		ln.Close()
	}
	p, _ := strconv.Atoi(port(a))
	return p
}

// hostTCPEcho connects to addr (an echo server behind a port forward), sends n random bytes
// while reading the echo, half-closes, and checks that exactly the same bytes came back.
func hostTCPEcho(ctx context.Context, addr string, n int64) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(time.Minute))
	}
	tc := c.(*net.TCPConn)
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(tc, sent), io.LimitReader(randomStream(), n))
		if err == nil {
			err = tc.CloseWrite()
		}
		werr <- err
	}()
	recv := sha256.New()
	got, rerr := io.Copy(recv, tc)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read after %d bytes: %w", got, rerr)
	}
	if s, r := hex.EncodeToString(sent.Sum(nil)), hex.EncodeToString(recv.Sum(nil)); got != n || s != r {
		return fmt.Errorf("sent %d bytes sha256 %s, echo %d bytes sha256 %s", n, s, got, r)
	}
	return nil
}

// hostUDPEcho sends datagrams to addr (a UDP echo server behind a forward) from flows
// source ports and expects each back.
func hostUDPEcho(addr string, flows int) error {
	var errs []error
	for i := range flows {
		if _, err := udpFlow(addr, fmt.Sprintf("usernet clients %d %d", i, time.Now().UnixNano())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// procID names a process so that a reused PID does not pass for it.
type procID struct {
	pid   int
	start string // field 22 of /proc/PID/stat
	cmd   string // for messages
}

func (p procID) String() string { return fmt.Sprintf("%d (%s)", p.pid, p.cmd) }

// procStat returns the state and start time of pid.
func procStat(pid int) (state, start string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return "", "", false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return "", "", false
	}
	return f[0], f[19], true
}

// alive says whether p still runs (a zombie has finished).
func (p procID) alive() bool {
	state, start, ok := procStat(p.pid)
	return ok && start == p.start && state != "Z" && state != "X"
}

// findProcs lists the processes whose argv matches.
func findProcs(match func(argv []string, ppid int) bool) []procID {
	var found []procID
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		ppid := -1
		if st, err := os.ReadFile(d + "/stat"); err == nil {
			s := string(st)
			if i := strings.LastIndexByte(s, ')'); i >= 0 {
				if f := strings.Fields(s[i+1:]); len(f) > 1 {
					ppid, _ = strconv.Atoi(f[1])
				}
			}
		}
		if !match(argv, ppid) {
			continue
		}
		state, start, ok := procStat(pid)
		if !ok || state == "Z" {
			continue
		}
		found = append(found, procID{pid: pid, start: start, cmd: strings.Join(argv, " ")})
	}
	return found
}

// withDescendants adds to ps every process that descends from one of them.
func withDescendants(ps []procID) []procID {
	seen := map[int]bool{}
	for _, p := range ps {
		seen[p.pid] = true
	}
	for {
		more := findProcs(func(_ []string, ppid int) bool { return seen[ppid] })
		added := false
		for _, p := range more {
			if !seen[p.pid] {
				seen[p.pid] = true
				ps = append(ps, p)
				added = true
			}
		}
		if !added {
			return ps
		}
	}
}

// waitGone waits up to d for every process of ps to finish, and fails t naming those left.
func waitGone(t *testing.T, ps []procID, d time.Duration, why string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var left []string
		for _, p := range ps {
			if p.alive() {
				left = append(left, p.String())
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: still running %v later: %s", why, d, strings.Join(left, "; "))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lineWaiter reads r line by line in the background and reports when a line equal to want
// came.
func lineWaiter(r io.ReadCloser, want string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		seen := false
		for sc.Scan() {
			if !seen && strings.TrimSpace(sc.Text()) == want {
				seen = true
				close(ch)
			}
		}
		io.Copy(io.Discard, r)
	}()
	return ch
}
