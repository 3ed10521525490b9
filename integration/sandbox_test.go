package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// capNetBindService is the only capability --enable-sandbox keeps: CapEff in
// /proc/PID/status, hex, as the kernel prints it.
const capNetBindService = "0000000000000400"

// procStatus returns the fields of a /proc/.../status file.
func procStatus(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// runMount mounts a tmpfs on a new directory under the host's /run (in the test's mount
// namespace, which netns.sh's `ip netns exec` made), as podman and rootlesskit have mounts
// there, and returns the directory's name in /run.
func runMount(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("usernet-sandbox-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	dir := filepath.Join("/run", name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16k"); err != nil {
		os.Remove(dir)
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
	})
	return name
}

// mounted reports whether dir is a mount point in the test's own mount namespace.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// checkSeccompAllThreads checks that every thread of pid runs under a seccomp filter.
func checkSeccompAllThreads(t *testing.T, pid int) {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v %v", pid, tasks, err)
	}
	for _, task := range tasks {
		if st := procStatus(t, task); st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
			t.Errorf("%s: Seccomp %q, NoNewPrivs %q; want 2 (filter) and 1 on every thread", task, st["Seccomp"], st["NoNewPrivs"])
		}
	}
	t.Logf("%d threads, all with a seccomp filter", len(tasks))
}

// TestSandbox: with --enable-sandbox the process's root holds only /etc and /run (the
// host's, with the mounts below /run), it keeps CAP_NET_BIND_SERVICE and no other
// capability, no_new_privs is set, mounts under the caller's /run are untouched, and the
// network works. Unprivileged, the capability is held in a user namespace of its own.
func TestSandbox(t *testing.T) {
	setup(t)
	t.Parallel()
	for _, asRoot := range []bool{false, true} {
		t.Run(map[bool]string{false: "unprivileged", true: "root"}[asRoot], func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, defaultTimeout)
			runDir := runMount(t)
			tg := newTarget(t)
			u := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-sandbox"}, asRoot: asRoot})
			pid := u.cmd.Process.Pid

			entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
			if err != nil {
				t.Fatal(err)
			}
			var root []string
			for _, e := range entries {
				root = append(root, e.Name())
			}
			if !slices.Equal(root, []string{"etc", "run"}) {
				t.Errorf("/proc/%d/root holds %q; want only [etc run] (no home, root, var, tmp, proc)", pid, root)
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/run/%s", pid, runDir)); err != nil {
				t.Errorf("the host's /run/%s is not in the sandbox's /run: %v", runDir, err)
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/etc/passwd", pid)); err != nil {
				t.Errorf("the host's /etc is not in the sandbox: %v", err)
			}

			st := procStatus(t, fmt.Sprintf("/proc/%d/status", pid))
			if want := filepath.Base(suite.bin); st["Name"] != want {
				t.Errorf("process name %q; want %q (pgrep and ps look for it)", st["Name"], want)
			}
			for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
				if st[k] != capNetBindService {
					t.Errorf("%s: %s; want %s (CAP_NET_BIND_SERVICE only)", k, st[k], capNetBindService)
				}
			}
			if st["CapAmb"] != "0000000000000000" || st["NoNewPrivs"] != "1" {
				t.Errorf("CapAmb %s, NoNewPrivs %s; want none and 1", st["CapAmb"], st["NoNewPrivs"])
			}
			// Unprivileged, the capability means something only in a user namespace of its
			// own (as with slirp4netns); root stays in its own.
			nsUser, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
			nsSelf, _ := os.Readlink("/proc/self/ns/user")
			if newUserns := nsUser != nsSelf; newUserns == asRoot {
				t.Errorf("user namespace %s, the test's %s: want a new one only when unprivileged", nsUser, nsSelf)
			}
			if !asRoot && suite.isUsernet {
				uidMap, _ := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
				if want := fmt.Sprintf("%d %d 1", suite.uid, suite.uid); strings.Join(strings.Fields(string(uidMap)), " ") != want {
					t.Errorf("uid_map %q; want %q (our uid mapped to itself)", uidMap, want)
				}
			}

			p, got := hostHashServer(t)
			checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
			if !mounted(t, "/run/"+runDir) {
				t.Errorf("/run/%s is no longer mounted in the caller's namespace", runDir)
			}
			u.stop()
			if !mounted(t, "/run/"+runDir) {
				t.Errorf("/run/%s is no longer mounted in the caller's namespace after usernet exited", runDir)
			}
		})
	}
}

// TestSeccomp: with --enable-seccomp alone, every thread runs under the filter (also those
// started after the network came up) and the network works; the file system and the
// capabilities are untouched.
func TestSeccomp(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	tg := newTarget(t)
	u := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-seccomp"}})
	pid := u.cmd.Process.Pid
	p, got := hostHashServer(t)
	checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
	checkPing(t, tg, "10.0.2.2")
	checkSeccompAllThreads(t, pid)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/var", pid)); err != nil {
		t.Errorf("--enable-seccomp alone changed the root: %v", err)
	}
}

// TestSandboxSeccomp runs both flags as podman passes them (with --enable-ipv6, -c, -e,
// -r, MTU 65520) and checks that everything still works inside: TCP, UDP and ping through
// the gateway and to the fake internet, DNS relayed to a loopback upstream, IPv6; every
// thread is filtered; closing the exit fd ends it with status 0.
func TestSandboxSeccomp(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, defaultTimeout)
	dnsFlags, answer := dnsUpstream(t)
	tg := newTarget(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	u := startUsernet(t, tg, usernetOpts{
		flags: append([]string{"--mtu=65520", "--enable-sandbox", "--enable-seccomp", "--enable-ipv6", "-c", "-e", "4"}, dnsFlags...),
		extra: []*os.File{r},
	})
	r.Close()

	t.Run("tcp", func(t *testing.T) {
		p, got := hostHashServer(t)
		checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 8<<20, got)
		ln := inetListenTCP(t, "0.0.0.0:0")
		checkTCPUp(t, ctx, tg, net.JoinHostPort(suite.inet4, port(ln.Addr())), 1<<20, hashServer(t, ln))
		checkDial(t, tg, "10.0.2.2:"+closedPort(t), "ECONNREFUSED")
	})
	t.Run("udp", func(t *testing.T) {
		pc := listenUDP(t, "127.0.0.1:0")
		udpEchoServer(t, pc)
		checkUDP(t, tg, "10.0.2.2:"+port(pc.LocalAddr()), 20)
		// The ICMP error relay reads the socket's error queue (recvmsg MSG_ERRQUEUE).
		closed := listenUDP(t, "127.0.0.1:0")
		addr := "10.0.2.2:" + port(closed.LocalAddr())
		closed.Close()
		var res DialResult
		tg.helper(t, testContext(t, 30*time.Second), &res, "udp-send", addr)
		if res.Err != "ECONNREFUSED" {
			t.Errorf("udp-send %s (a closed port) under the sandbox: read error %q, want ECONNREFUSED", addr, res.Err)
		}
	})
	t.Run("ping", func(t *testing.T) {
		checkPing(t, tg, "10.0.2.2")
		checkPing(t, tg, suite.inet4)
	})
	t.Run("dns", func(t *testing.T) {
		checkDNS(t, tg, "10.0.2.3:53", "udp", "A", "sandbox.usernet.test", []string{answer})
		checkDNS(t, tg, "10.0.2.3:53", "tcp", "A", "sandbox-tcp.usernet.test", []string{answer})
	})
	t.Run("ipv6", func(t *testing.T) {
		waitSLAAC(t, testContext(t, 30*time.Second), tg)
		ln := listenTCP(t, "[::1]:0")
		checkTCPUp(t, ctx, tg, "[fd00::2]:"+port(ln.Addr()), 1<<20, hashServer(t, ln))
		inet := inetListenTCP(t, "[::]:0")
		checkTCPUp(t, ctx, tg, net.JoinHostPort(suite.inet6, port(inet.Addr())), 1<<20, hashServer(t, inet))
	})
	checkSeccompAllThreads(t, u.cmd.Process.Pid)
	if u.exited() {
		t.Fatalf("%s exited before the exit fd closed: %v", u.name, u.err)
	}
	w.Close()
	if code := u.waitExit(t, 5*time.Second); code != 0 {
		t.Fatalf("%s: exit status %d after the exit fd closed; want 0\nstderr:\n%s", u.name, code, u.stderr.String())
	}
}

// TestSandboxLifetime: in the sandbox with seccomp, SIGTERM still ends usernet with status
// 0, and so does the target's end: a PID target's exit (seen through a pidfd opened
// before the sandbox) and the removal of a path target's namespace file outside /run
// (whose directory the sandbox shows read-only for that). TestPodman covers a path target
// with usernet started in a mount namespace of its own that dies when the sandbox leaves it.
func TestSandboxLifetime(t *testing.T) {
	setup(t)
	usernetOnly(t, "slirp4netns 1.2 dies of SIGTERM and does not exit when its target dies")
	t.Parallel()
	flags := []string{"-c", "--enable-sandbox", "--enable-seccomp"}
	t.Run("sigterm", func(t *testing.T) {
		t.Parallel()
		tg := newTarget(t)
		u := startUsernet(t, tg, usernetOpts{flags: flags})
		u.cmd.Process.Signal(unix.SIGTERM)
		if code := u.waitExit(t, 5*time.Second); code != 0 {
			t.Errorf("%s: exit status %d after SIGTERM; want 0\nstderr:\n%s", u.name, code, u.stderr.String())
		}
	})
	t.Run("pid-target-exit", func(t *testing.T) {
		t.Parallel()
		tg := newTarget(t)
		u := startUsernet(t, tg, usernetOpts{flags: flags})
		tg.kill()
		if code := u.waitExit(t, 10*time.Second); code != 0 {
			t.Errorf("%s: exit status %d after the target died; want 0\nstderr:\n%s", u.name, code, u.stderr.String())
		}
	})
	t.Run("path-target-removed", func(t *testing.T) {
		t.Parallel()
		tg := newTarget(t)
		dir := userDir(t) // under /tmp: invisible in the sandbox
		netPath := bindNs(t, fmt.Sprintf("/proc/%d/ns/net", tg.pid), filepath.Join(dir, "net"))
		u := startUsernet(t, tg, usernetOpts{
			flags:      append([]string{"--netns-type=path", "--userns-path=/proc/" + strconv.Itoa(tg.pid) + "/ns/user"}, flags...),
			positional: []string{netPath, "tap0"},
		})
		ctx := testContext(t, defaultTimeout)
		p, got := hostHashServer(t)
		checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
		// Still running a watch period later: the path is hidden from the sandbox, not gone.
		time.Sleep(1500 * time.Millisecond)
		if u.exited() {
			t.Fatalf("%s exited while its namespace file %s still exists: %v\nstderr:\n%s", u.name, netPath, u.err, u.stderr.String())
		}
		if err := unix.Unmount(netPath, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(netPath); err != nil {
			t.Fatal(err)
		}
		if code := u.waitExit(t, 10*time.Second); code != 0 {
			t.Errorf("%s: exit status %d after %s was removed; want 0\nstderr:\n%s", u.name, code, netPath, u.stderr.String())
		}
	})
}

// fsProbeOps are the operations USERNET_DEBUG_FS_PROBE tries (cmd/usernet/debug.go), in
// its order.
var fsProbeOps = []string{"read", "write", "truncate", "create", "unlink", "rename", "mkdir", "rmdir", "symlink", "link", "mkfifo"}

// TestSandboxFS: a sandboxed usernet changes nothing of its user's: from inside the
// running process (the usernet_debug build's USERNET_DEBUG_FS_PROBE), writing, truncating,
// creating, removing, renaming and linking files in a directory of the user's, the API
// socket's, all fail, and the directory is unchanged. With --enable-seccomp alone the
// directory is in sight and the filter refuses (EPERM; Landlock would say EACCES);
// with --enable-sandbox the API socket's directory is not in the sandbox at all (ENOENT),
// where it was once bound writable. Without a sandbox the same probes work (the control).
// The socket file itself stays after a sandboxed exit, and the next start replaces it.
func TestSandboxFS(t *testing.T) {
	setup(t)
	usernetOnly(t, "the usernet_debug build's probe")
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flags []string
		want  map[string]string // op → result; "" = every op not listed
	}{
		{"none", nil, map[string]string{"": "ok"}},
		{"seccomp", []string{"--enable-seccomp"}, map[string]string{"": "EPERM"}},
		{"sandbox", []string{"--enable-sandbox"}, map[string]string{"": "ENOENT"}},
		{"sandbox-seccomp", []string{"--enable-sandbox", "--enable-seccomp"}, map[string]string{"": "EPERM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := shortUserDir(t, "sbfs")
			for _, f := range []string{"victim", "to-unlink", "to-rename"} {
				p := filepath.Join(dir, f)
				if err := os.WriteFile(p, []byte("untouched"), 0o600); err != nil {
					t.Fatal(err)
				}
				os.Chown(p, int(suite.uid), int(suite.gid))
			}
			os.Mkdir(filepath.Join(dir, "sub"), 0o700)
			os.Chown(filepath.Join(dir, "sub"), int(suite.uid), int(suite.gid))
			sock := filepath.Join(dir, "api.sock")
			before := listDir(t, dir)
			tg := newTarget(t)
			u := startUsernet(t, tg, usernetOpts{
				flags: append([]string{"-c", "--api-socket", sock}, tc.flags...),
				env:   []string{"USERNET_DEBUG_FS_PROBE=" + dir},
				debug: true,
			})
			// Written before ready; the harness copies stderr over a pipe.
			for end := time.Now().Add(5 * time.Second); !strings.Contains(u.stderr.String(), "fs-probe mkfifo:") && time.Now().Before(end); {
				time.Sleep(20 * time.Millisecond)
			}
			got := map[string]string{}
			for _, l := range strings.Split(u.stderr.String(), "\n") {
				if op, res, ok := strings.Cut(strings.TrimPrefix(l, "usernet: debug fs-probe "), ": "); ok && l != op {
					got[op] = res
				}
			}
			for _, op := range fsProbeOps {
				want, ok := tc.want[op]
				if !ok {
					want = tc.want[""]
				}
				if got[op] != want {
					t.Errorf("%s in %s from inside: %q; want %q", op, dir, got[op], want)
				}
			}
			// The API still works over the inherited listener, for the user (root is
			// not in a sandbox's user namespace: refused, docs/api.md).
			if res := apiCallAs(t, sock, `{"execute":"list_hostfwd"}`, userCred()); res.Reply != `{"entries":[]}` {
				t.Errorf("list_hostfwd as the user: %+v", res)
			}
			u.stop()
			after := listDir(t, dir)
			if tc.name == "none" {
				if slices.Equal(before, after) {
					t.Errorf("%s unchanged without a sandbox: the probes did nothing (%v)", dir, after)
				}
				return
			}
			// Sandboxed, the socket file stays (its directory is not writable inside).
			before = append(before, "api.sock S--------- ")
			slices.Sort(before)
			if !slices.Equal(before, after) {
				t.Errorf("%s changed under the sandbox:\n before %q\n after  %q", dir, before, after)
			}
			// The next start replaces the stale socket file.
			u2 := startUsernet(t, newTarget(t), usernetOpts{flags: append([]string{"-c", "--api-socket", sock}, tc.flags...)})
			if res := apiCallAs(t, sock, `{"execute":"list_hostfwd"}`, userCred()); res.Reply != `{"entries":[]}` {
				t.Errorf("list_hostfwd after a restart on the stale socket file: %+v", res)
			}
			u2.stop()
		})
	}
}

// listDir is dir's entries, sorted, as "name MODE content" (content for regular files).
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		var b []byte
		if e.Type().IsRegular() {
			b, _ = os.ReadFile(filepath.Join(dir, e.Name()))
		}
		out = append(out, e.Name()+" "+e.Type().String()+" "+string(b))
	}
	slices.Sort(out)
	return out
}
