package integration

// pasta's command line, as the newer clients use it: rootless Podman 5.4 (pasta is its
// default network) and rootlesskit 2.0 (--net=pasta). Both come from Debian trixie, in the
// root file system that integration/trixie.sh builds; every client command runs inside it
// through integration/trixie-exec, in the suite's private host netns, as the test user.
// Each test runs against two peers, named in the subtest: "pasta-2025", the root's own
// /usr/bin/pasta (behind a wrapper that logs the arguments each call got), and "usernet",
// a symlink named pasta to the binary under test. What the real pasta does here is what
// usernet's pasta front end must do.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// envTrixieRoot names the root made by integration/trixie.sh (test.sh sets it).
const envTrixieRoot = "USERNET_TRIXIE_ROOT"

// pastaPeers are the programs run in pasta's place, by subtest name.
var pastaPeers = []string{"pasta-2025", "usernet"}

// trixieExec is integration/trixie-exec (go test runs in the package's directory).
var trixieExec = func() string {
	p, _ := filepath.Abs("trixie-exec")
	return p
}()

// trixieRoot is the trixie root file system of the tests.
type trixieRoot struct {
	dir      string
	versions map[string]string // package → version, from ROOT/usernet-versions.txt
}

var trixieLog sync.Once

// needTrixie returns the trixie root, or skips t when there is none (fails it with
// USERNET_REQUIRE_NS=1: test.sh builds the root).
func needTrixie(t *testing.T) *trixieRoot {
	t.Helper()
	setup(t)
	if !suite.isUsernet {
		t.Skipf("%s is not usernet: these tests set usernet's pasta front end beside the real pasta", suite.bin)
	}
	dir := os.Getenv(envTrixieRoot)
	why := ""
	if dir == "" {
		why = envTrixieRoot + " is not set"
	} else if _, err := os.Stat(filepath.Join(dir, "usr/bin/podman")); err != nil {
		why = fmt.Sprintf("%s=%s has no Podman: %v", envTrixieRoot, dir, err)
	}
	if why != "" {
		why += "; integration/trixie.sh builds the Debian trixie root of these tests (test.sh runs it)"
		if os.Getenv(envRequireNS) == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	r := &trixieRoot{dir: dir, versions: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(dir, "usernet-versions.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			r.versions[f[0]] = f[1]
		}
	}
	trixieLog.Do(func() {
		t.Logf("trixie root %s: podman %s, passt %s, rootlesskit %s", dir, r.versions["podman"], r.versions["passt"], r.versions["rootlesskit"])
	})
	ensureSubIDs(t)
	// Before entering the root: trixie-exec gives it this /sys, cgroup mounts included.
	if err := ensureCgroupMounts(); err != nil {
		t.Fatalf("the clients need the cgroup file systems: %v", err)
	}
	return r
}

// rootPath is the search path inside the root.
const rootPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// command returns argv to run inside the root as the test user, with exactly env.
func (r *trixieRoot) command(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	args := append([]string{r.dir, "--user", testUser, "--"}, argv...)
	cmd := exec.CommandContext(ctx, trixieExec, args...)
	cmd.Env = env
	// trixie-exec keeps the process (unshare without fork, setpriv --pdeathsig keep): the
	// signal reaches the client itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// pastaPeer is what a client runs as pasta: a directory holding an executable "pasta".
type pastaPeer struct {
	name      string
	isUsernet bool
	dir       string // for Podman's helper_binaries_dir
	bin       string // dir/pasta, for rootlesskit's --pasta-binary
	calls     string // the wrapper of the real pasta appends each call's arguments here
}

func newPastaPeer(t *testing.T, root *trixieRoot, name string) *pastaPeer {
	t.Helper()
	dir := shortUserDir(t, "pb-")
	p := &pastaPeer{name: name, dir: dir, bin: filepath.Join(dir, "pasta")}
	switch name {
	case "usernet":
		// The binary decides it is pasta from argv[0]'s name, as pasta itself does.
		p.isUsernet = true
		if err := os.Symlink(suite.bin, p.bin); err != nil {
			t.Fatal(err)
		}
	case "pasta-2025":
		if _, err := os.Stat(filepath.Join(root.dir, "usr/bin/pasta")); err != nil {
			t.Fatalf("the trixie root has no pasta: %v", err)
		}
		p.calls = filepath.Join(dir, "calls.log")
		if err := os.WriteFile(p.calls, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p.calls, int(suite.uid), int(suite.gid)); err != nil {
			t.Fatal(err)
		}
		// exec: pasta keeps the wrapper's PID, stdio and parent, as if called directly.
		script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >>%s\nexec /usr/bin/pasta \"$@\"\n", p.calls)
		if err := os.WriteFile(p.bin, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if b, err := os.ReadFile(p.calls); err == nil && len(b) > 0 {
				t.Logf("the clients called pasta with:\n%s", b)
			}
		})
	default:
		t.Fatalf("unknown pasta peer %q", name)
	}
	return p
}

// isPasta says whether argv is a process of a pasta peer: the real pasta keeps argv[0]
// (/usr/bin/pasta, also after re-executing pasta.avx2), usernet runs as DIR/pasta.
func isPasta(argv []string) bool {
	return strings.HasPrefix(filepath.Base(argv[0]), "pasta")
}

// --- Podman ---

// pastaPodman is rootless Podman of the trixie root, for the test user, with its own
// configuration and storage; its helper_binaries_dir puts the peer first, so that Podman
// runs it as pasta.
type pastaPodman struct {
	podmanEnv
	root *trixieRoot
	peer *pastaPeer
	www  string // served by busybox httpd in the containers
	sha  string // sha256 of www/blob
}

func newPastaPodman(t *testing.T, root *trixieRoot, peer *pastaPeer) *pastaPodman {
	t.Helper()
	// runc: crun refuses the suite's cgroup v1/v2 hybrid.
	conf := fmt.Sprintf(`[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
helper_binaries_dir = [%q, "/usr/libexec/podman", "/usr/lib/podman"]

[network]
default_rootless_network_cmd = "pasta"
# Bridge networks (podman network create): the root has no nft nor iptables for netavark's
# rules, and needs none (rootlessport publishes ports, pasta proxies every flow).
firewall_driver = "none"
`, peer.dir)
	e := &pastaPodman{root: root, peer: peer, podmanEnv: *podmanConfig(t, conf, rootPath, "PODMAN_IGNORE_CGROUPSV1_WARNING=1")}
	dir := e.dir
	cleanPodmanUp(t, e.podman, &e.podmanEnv)

	// The files httpd serves: a blob to fetch, and a CGI script that reports the client's
	// address as the server sees it.
	e.www = shortUserDir(t, "www-")
	blob := make([]byte, clientTransfer)
	rand.Read(blob)
	e.sha = fmt.Sprintf("%x", sha256.Sum256(blob))
	cgi := filepath.Join(e.www, "cgi-bin")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(e.www, "blob"), blob, 0o644},
		{filepath.Join(e.www, "ok"), []byte("ok\n"), 0o644},
		{filepath.Join(cgi, "addr"), []byte("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n"), 0o755},
	} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}

	// The image: the root's busybox-static alone.
	importBusybox(t, e.podman, dir, filepath.Join(root.dir, "usr/bin/busybox"))
	return e
}

// podman runs the root's podman; it returns stdout, or stdout and stderr with an error.
func (e *pastaPodman) podman(ctx context.Context, args ...string) (string, error) {
	cmd := e.root.command(ctx, e.env, append([]string{"podman"}, args...)...)
	cmd.Dir = e.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("podman %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// pastaContainer is a running detached container.
type pastaContainer struct {
	name  string
	netns string   // its network namespace (podman inspect's SandboxKey)
	pasta []procID // the peer's processes serving it
}

// run starts `podman run -d --name NAME ARGS...` and finds the peer's processes for its
// network namespace (pasta, as a daemon, is no child of anything the test knows).
func (e *pastaPodman) run(t *testing.T, ctx context.Context, name string, args ...string) *pastaContainer {
	t.Helper()
	start := time.Now()
	out, err := e.podman(ctx, append([]string{"run", "-d", "--name", name, "--pull=never"}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("podman run %s: %v", name, time.Since(start).Round(time.Millisecond))
	key, err := e.podman(ctx, "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name)
	key = strings.TrimSpace(key)
	if err != nil || key == "" {
		t.Fatalf("podman inspect %s: %v: %q", name, err, key)
	}
	c := &pastaContainer{name: name, netns: key}
	c.pasta = withDescendants(findProcs(func(argv []string, _ int) bool { return isPasta(argv) && slices.Contains(argv, key) }))
	if len(c.pasta) == 0 {
		logs, _ := e.podman(ctx, "logs", name)
		t.Fatalf("container %s runs, but no pasta process serves its netns %s; container log:\n%s", name, key, logs)
	}
	return c
}

// httpd starts busybox httpd on port 80 (and on port 81 too with both) serving e.www.
func (e *pastaPodman) httpd(t *testing.T, ctx context.Context, name string, both bool, args ...string) *pastaContainer {
	t.Helper()
	args = append(args, "-v", e.www+":/www:ro", podmanImage)
	if both {
		args = append(args, "/bin/sh", "-c", "/bin/busybox httpd -p 81 -h /www && exec /bin/busybox httpd -f -p 80 -h /www")
	} else {
		args = append(args, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
	}
	return e.run(t, ctx, name, args...)
}

// exec runs a busybox applet in container name and returns its output.
func (e *pastaPodman) exec(t *testing.T, ctx context.Context, name string, argv ...string) string {
	t.Helper()
	out, err := e.podman(ctx, append([]string{"exec", name, "/bin/busybox"}, argv...)...)
	if err != nil {
		t.Fatalf("in container %s: %v\n%s", name, err, out)
	}
	return out
}

// checkAlive fails t if a process of the peer serving c has exited.
func (c *pastaContainer) checkAlive(t *testing.T) {
	t.Helper()
	for _, p := range c.pasta {
		if !p.alive() {
			t.Errorf("container %s runs, but pasta process %s has exited", c.name, p)
		}
	}
}

// waitHTTP waits up to 15 s for url to answer "ok".
func waitHTTP(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	start := time.Now()
	for {
		b, err := httpGetURL(ctx, url)
		if err == nil && string(b) == "ok\n" {
			return
		}
		if time.Since(start) > 15*time.Second || ctx.Err() != nil {
			t.Fatalf("GET %s: %q, %v after %v; want \"ok\"", url, b, err, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fetchBlob fetches the 2 MiB blob from base and checks its sha256.
func (e *pastaPodman) fetchBlob(t *testing.T, ctx context.Context, base string) {
	t.Helper()
	start := time.Now()
	b, err := httpGetURL(ctx, base+"/blob")
	if err != nil {
		t.Errorf("GET %s/blob: %v", base, err)
		return
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != e.sha {
		t.Errorf("GET %s/blob: %d bytes sha256 %s; want %d bytes sha256 %s", base, len(b), got, clientTransfer, e.sha)
		return
	}
	t.Logf("GET %s/blob: %d bytes in %v", base, len(b), time.Since(start).Round(time.Millisecond))
}

// clientAddr returns the address the container's httpd saw the request to base come
// from, IPv4-mapped addresses unmapped.
func clientAddr(t *testing.T, ctx context.Context, base string) netip.Addr {
	t.Helper()
	b, err := httpGetURL(ctx, base+"/cgi-bin/addr")
	if err != nil {
		t.Fatalf("GET %s/cgi-bin/addr: %v", base, err)
	}
	s := strings.Trim(strings.TrimSpace(string(b)), "[]")
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("GET %s/cgi-bin/addr: %q is no address", base, b)
	}
	return a.Unmap()
}

// hostAddr is the private host's address of the family given by netns.sh ("4" or "6"):
// pasta gives a container the host's own address.
func hostAddr(t *testing.T, family string) netip.Addr {
	t.Helper()
	v := os.Getenv("USERNET_HOST" + family)
	a, err := netip.ParseAddr(v)
	if err != nil {
		t.Fatalf("USERNET_HOST%s=%q: %v", family, v, err)
	}
	return a
}

// TestPastaPodman runs rootless Podman 5.4 with its default network, pasta, against each
// peer: published TCP (IPv4 and IPv6), UDP and a port range, the client's address the
// server sees, DNS through 169.254.1.1, host.containers.internal, custom addressing with
// --network pasta:OPTS, `podman info`, and that the peer exits with its container and a
// new one gets the same port at once.
func TestPastaPodman(t *testing.T) {
	root := needTrixie(t)
	t.Parallel()
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			peer := newPastaPeer(t, root, name)
			e := newPastaPodman(t, root, peer)
			ctx := testContext(t, 4*time.Minute)
			host4, host6 := hostAddr(t, "4"), hostAddr(t, "6")

			// The container of the first subtests.
			var web *pastaContainer
			webPort := freePort(t, "tcp")
			webBase := fmt.Sprintf("http://127.0.0.1:%d", webPort)
			needWeb := func(t *testing.T) {
				t.Helper()
				if web == nil {
					t.Fatal("no container: the tcp subtest failed to start it")
				}
			}

			t.Run("tcp", func(t *testing.T) {
				web = e.httpd(t, ctx, "web", false, "-p", fmt.Sprintf("127.0.0.1:%d:80", webPort))
				waitHTTP(t, ctx, webBase+"/ok")
				e.fetchBlob(t, ctx, webBase)
				web.checkAlive(t)
			})

			t.Run("client-address", func(t *testing.T) {
				needWeb(t)
				// pasta gives the container the host's address, and a connection from the
				// host's loopback arrives from that address (Podman passes --no-map-gw).
				if got := clientAddr(t, ctx, webBase); got != host4 {
					t.Errorf("a request from the host's 127.0.0.1 to -p 127.0.0.1:%d:80 came from %s inside; want %s", webPort, got, host4)
				}
			})

			t.Run("dns", func(t *testing.T) {
				needWeb(t)
				resolv := e.exec(t, ctx, web.name, "cat", "/etc/resolv.conf")
				var ns []string
				for _, l := range strings.Split(resolv, "\n") {
					if f := strings.Fields(l); len(f) >= 2 && f[0] == "nameserver" {
						ns = append(ns, f[1])
					}
				}
				if len(ns) == 0 || ns[0] != "169.254.1.1" {
					t.Errorf("container's /etc/resolv.conf:\n%s\nwant nameserver 169.254.1.1 first", resolv)
				}
				// --dns-forward 169.254.1.1: to the host's resolver, the suite's server.
				out, err := e.podman(ctx, "exec", web.name, "/bin/busybox", "nslookup", "podman.usernet.test", "169.254.1.1")
				if err != nil || !strings.Contains(out, resolvAnswer) {
					t.Errorf("in container %s, nslookup podman.usernet.test 169.254.1.1: %v\n%s\nwant address %s", web.name, err, out, resolvAnswer)
				}
			})

			t.Run("host.containers.internal", func(t *testing.T) {
				needWeb(t)
				hosts := e.exec(t, ctx, web.name, "cat", "/etc/hosts")
				if !regexpLine(hosts, `169\.254\.1\.2\s+host\.containers\.internal\b`) {
					t.Errorf("container's /etc/hosts:\n%s\nwant host.containers.internal at 169.254.1.2 (--map-guest-addr)", hosts)
				}
				// A server on the host's own address, which the container's address
				// shadows: --map-guest-addr 169.254.1.2 reaches it.
				ln := listenTCP(t, net.JoinHostPort(host4.String(), "0"))
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintln(w, r.RemoteAddr)
				})}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
				url := fmt.Sprintf("http://host.containers.internal:%s/", port(ln.Addr()))
				out := strings.TrimSpace(e.exec(t, ctx, web.name, "wget", "-q", "-O", "-", url))
				ap, err := netip.ParseAddrPort(out)
				if err != nil {
					t.Fatalf("in container %s, wget %s: %q", web.name, url, out)
				}
				t.Logf("wget %s: the host's server saw %s", url, ap)
				if ap.Addr().Unmap() != host4 {
					t.Errorf("wget %s: the host's server saw the connection from %s; want %s", url, ap, host4)
				}
			})

			// The other way: the container fetches the 2 MiB blob from a server on the
			// host (through host.containers.internal) and checks its sha256 itself.
			t.Run("from-the-container", func(t *testing.T) {
				needWeb(t)
				ln := listenTCP(t, net.JoinHostPort(host4.String(), "0"))
				srv := &http.Server{Handler: http.FileServer(http.Dir(e.www))}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
				url := fmt.Sprintf("http://host.containers.internal:%s/blob", port(ln.Addr()))
				start := time.Now()
				out := e.exec(t, ctx, web.name, "sh", "-c", "wget -q -O - "+url+" | sha256sum")
				t.Logf("in the container, wget %s | sha256sum: %v", url, time.Since(start).Round(time.Millisecond))
				if f := strings.Fields(out); len(f) == 0 || f[0] != e.sha {
					t.Errorf("in container %s, sha256 of %s = %q; want %s", web.name, url, out, e.sha)
				}
			})

			t.Run("rm-restart", func(t *testing.T) {
				needWeb(t)
				// A transfer in flight when the namespace goes: the client is left
				// half-way through the blob (it reads nothing more), and the network
				// helper must still go, ports and all.
				inflight, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", webPort))
				if err != nil {
					t.Fatal(err)
				}
				defer inflight.Close()
				fmt.Fprintf(inflight, "GET /blob HTTP/1.0\r\n\r\n")
				if _, err := io.ReadFull(inflight, make([]byte, 4096)); err != nil {
					t.Fatalf("the start of the blob: %v", err)
				}
				start := time.Now()
				if out, err := e.podman(ctx, "rm", "--force", "--time", "0", web.name); err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				rm := time.Since(start)
				waitGone(t, web.pasta, 10*time.Second, "after podman rm --force "+web.name)
				t.Logf("podman rm: %v; pasta gone %v after rm returned", rm.Round(time.Millisecond), (time.Since(start) - rm).Round(time.Millisecond))
				inflight.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.Copy(io.Discard, inflight); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("the transfer in flight was still open 10 s after its network helper went: %v", err)
				}
				// At once, the same name and port: the port must be free again.
				c := e.httpd(t, ctx, web.name, false, "-p", fmt.Sprintf("127.0.0.1:%d:80", webPort))
				waitHTTP(t, ctx, webBase+"/ok")
				c.checkAlive(t)
				t.Logf("the new container answers on port %d %v after podman rm began", webPort, time.Since(start).Round(time.Millisecond))
			})

			t.Run("info", func(t *testing.T) {
				out, err := e.podman(ctx, "info", "--format", "{{json .Host.Pasta}}")
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				var info struct {
					Executable string `json:"executable"`
					Package    string `json:"package"`
					Version    string `json:"version"`
				}
				if err := json.Unmarshal([]byte(out), &info); err != nil {
					t.Fatalf("podman info .Host.Pasta: %q: %v", out, err)
				}
				t.Logf("podman info .Host.Pasta: %+v", info)
				if info.Executable != peer.bin {
					t.Errorf("podman info: pasta executable %q; want %q", info.Executable, peer.bin)
				}
				// Podman runs `pasta --version` with stdout on a pipe. pasta 2025-05
				// prints nothing then (its output stays in the stdio buffer: it leaves
				// through _exit), so Podman shows an empty version; usernet must print it.
				if peer.isUsernet && !strings.HasPrefix(info.Version, "pasta ") {
					t.Errorf("podman info: pasta version %q; want \"pasta ...\" (the first line of --version)", info.Version)
				}
			})

			t.Run("udp", func(t *testing.T) {
				up := freePort(t, "udp")
				args := append([]string{"-i", "-p", fmt.Sprintf("127.0.0.1:%d:81/udp", up)}, helperMounts(t, root)...)
				e.run(t, ctx, "udp", append(args, podmanImage, "/helper", "serve", "81")...)
				addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(up))
				waitUDPEcho(t, addr)
				if err := hostUDPEcho(addr, 5); err != nil {
					t.Errorf("-p %s:81/udp: %v", addr, err)
				}
			})

			t.Run("ipv6", func(t *testing.T) {
				p6 := freePort6(t)
				c := e.httpd(t, ctx, "web6", false, "-p", fmt.Sprintf("[::1]:%d:80", p6))
				base := fmt.Sprintf("http://[::1]:%d", p6)
				waitHTTP(t, ctx, base+"/ok")
				e.fetchBlob(t, ctx, base)
				if got := clientAddr(t, ctx, base); got != host6 {
					t.Errorf("a request from the host's ::1 to -p [::1]:%d:80 came from %s inside; want %s", p6, got, host6)
				}
				c.checkAlive(t)
			})

			t.Run("port-range", func(t *testing.T) {
				p1 := freePortPair(t)
				e.httpd(t, ctx, "range", true, "-p", fmt.Sprintf("127.0.0.1:%d-%d:80-81", p1, p1+1))
				for _, p := range []int{p1, p1 + 1} {
					waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/ok", p))
				}
			})

			t.Run("custom-address", func(t *testing.T) {
				p := freePort(t, "tcp")
				c := e.httpd(t, ctx, "custom", false, "--network", "pasta:-a,10.0.2.100,-n,24,-g,10.0.2.2",
					"-p", fmt.Sprintf("127.0.0.1:%d:80", p))
				base := fmt.Sprintf("http://127.0.0.1:%d", p)
				waitHTTP(t, ctx, base+"/ok")
				addrs := e.exec(t, ctx, c.name, "ip", "-4", "-o", "addr", "show")
				if !regexpLine(addrs, `inet 10\.0\.2\.100/24\b`) {
					t.Errorf("in container %s, ip -4 addr:\n%s\nwant 10.0.2.100/24", c.name, addrs)
				}
				routes := e.exec(t, ctx, c.name, "ip", "-4", "route", "show")
				if !regexpLine(routes, `^default via 10\.0\.2\.2\b`) {
					t.Errorf("in container %s, ip -4 route:\n%s\nwant default via 10.0.2.2", c.name, routes)
				}
				if got, want := clientAddr(t, ctx, base), netip.MustParseAddr("10.0.2.100"); got != want {
					t.Errorf("a request from the host's 127.0.0.1 came from %s inside; want %s (the container's own address)", got, want)
				}
			})

			// A network of its own (podman network create): rootless Podman runs the
			// container in a bridge inside its rootless-netns, which pasta serves, started
			// with --pid FILE (Podman reads the daemon's PID there); published ports go
			// through rootlessport, not pasta.
			t.Run("bridge-network", func(t *testing.T) {
				const network = "un-bridge"
				// No aardvark-dns in the root: no DNS on the network.
				if out, err := e.podman(ctx, "network", "create", "--disable-dns", network); err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				t.Cleanup(func() {
					cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					e.podman(cctx, "rm", "--force", "--time", "0", "bridged")
					if out, err := e.podman(cctx, "network", "rm", "--force", network); err != nil {
						t.Logf("%v\n%s", err, out)
					}
				})
				p := freePort(t, "tcp")
				out, err := e.podman(ctx, "run", "-d", "--name", "bridged", "--pull=never", "--network", network,
					"-p", fmt.Sprintf("127.0.0.1:%d:80", p), "-v", e.www+":/www:ro", podmanImage, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				netns := findProcs(func(argv []string, _ int) bool {
					return isPasta(argv) && slices.ContainsFunc(argv, func(a string) bool { return strings.HasSuffix(a, "/rootless-netns") })
				})
				if len(netns) == 0 {
					t.Fatal("a container on a bridge network runs, but no pasta serves the rootless-netns")
				}
				helper := withDescendants(netns)
				if len(helper) > 1 {
					t.Logf("rootless-netns: %d pasta processes", len(helper))
				}
				// Published: rootlessport into the bridge.
				base := fmt.Sprintf("http://127.0.0.1:%d", p)
				waitHTTP(t, ctx, base+"/ok")
				e.fetchBlob(t, ctx, base)
				// Out: a server on the host's own address through host.containers.internal
				// (pasta's --map-guest-addr, reached through the bridge and the
				// rootless-netns), and one in the fake internet.
				ln := listenTCP(t, net.JoinHostPort(host4.String(), "0"))
				srv := &http.Server{Handler: http.FileServer(http.Dir(e.www))}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
				far := inetListenTCP(t, net.JoinHostPort(os.Getenv("USERNET_INET4"), "0"))
				fsrv := &http.Server{Handler: http.FileServer(http.Dir(e.www))}
				go fsrv.Serve(far)
				t.Cleanup(func() { fsrv.Close() })
				for _, url := range []string{
					fmt.Sprintf("http://host.containers.internal:%s/blob", port(ln.Addr())),
					fmt.Sprintf("http://%s/blob", far.Addr()),
				} {
					out := e.exec(t, ctx, "bridged", "sh", "-c", "wget -q -T 20 -O - "+url+" | sha256sum")
					if f := strings.Fields(out); len(f) == 0 || f[0] != e.sha {
						t.Errorf("in the bridged container, sha256 of %s = %q; want %s", url, out, e.sha)
					}
				}
				// Teardown: with its last container gone, Podman ends the rootless-netns
				// (SIGTERM to the PID file's process) and its pasta goes.
				if out, err := e.podman(ctx, "rm", "--force", "--time", "0", "bridged"); err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				waitGone(t, helper, 10*time.Second, "after the last container of the bridge network was removed")
			})
		})
	}
}

// helperMounts returns podman run flags that put this test binary at /helper in a
// container, with the dynamic loader and libraries it needs (the root's own).
func helperMounts(t *testing.T, root *trixieRoot) []string {
	t.Helper()
	f, err := elf.Open(suite.helper)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	args := []string{"-v", suite.helper + ":/helper:ro", "-e", envHelper + "=1"}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			paths = append(paths, strings.TrimRight(string(b), "\x00"))
		}
	}
	for _, lib := range libs {
		found := ""
		for _, d := range []string{"/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/lib64", "/lib"} {
			if _, err := os.Stat(filepath.Join(root.dir, d, lib)); err == nil {
				found = filepath.Join(d, lib)
				break
			}
		}
		if found == "" {
			t.Fatalf("%s needs %s, which the trixie root does not have", suite.helper, lib)
		}
		paths = append(paths, found)
	}
	for _, p := range paths {
		args = append(args, "-v", p+":"+p+":ro")
	}
	return args
}

// waitUDPEcho waits up to 15 s for a UDP echo server behind addr to answer.
func waitUDPEcho(t *testing.T, addr string) {
	t.Helper()
	start := time.Now()
	for {
		_, err := udpFlow(addr, "ready?")
		if err == nil {
			return
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("UDP %s: no echo after %v: %v", addr, time.Since(start).Round(time.Millisecond), err)
		}
		time.Sleep(100 * time.Millisecond) // a refusal (nothing bound yet) comes back at once
	}
}

// freePort6 returns a port of ::1 that nothing listens on for TCP.
func freePort6(t *testing.T) int {
	t.Helper()
	ln := listenTCP(t, "[::1]:0")
	p, _ := strconv.Atoi(port(ln.Addr()))
	ln.Close()
	return p
}

// freePortPair returns a TCP port P of 127.0.0.1 such that P and P+1 are free.
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		ln := listenTCP(t, "127.0.0.1:0")
		p, _ := strconv.Atoi(port(ln.Addr()))
		ln2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		ln.Close()
		if err == nil {
			ln2.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports on 127.0.0.1")
	return 0
}

// regexpLine says whether a line of text matches the regular expression re.
func regexpLine(text, re string) bool {
	return regexp.MustCompile(`(?m)` + re).MatchString(text)
}

// --- rootlesskit ---

// TestPastaRootlesskit runs rootlesskit 2.0 --net=pasta against each peer, with a TCP and
// UDP server inside: with --port-driver=implicit (pasta's -t auto, -u auto) the server's
// port appears on the host by itself; with none it does not. Both: the host's loopback at
// 10.0.2.2, DNS through 10.0.2.3 (--dns-forward), and the peer exits with rootlesskit.
func TestPastaRootlesskit(t *testing.T) {
	root := needTrixie(t)
	t.Parallel()

	// rootlesskit 2.0 forwards ports with pasta itself or not at all: it refuses its own
	// port drivers with --net=pasta, before it runs pasta.
	t.Run("port-drivers", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t, time.Minute)
		dir := shortUserDir(t, "rk-")
		for _, d := range []string{"builtin", "slirp4netns"} {
			cmd := root.command(ctx, []string{rootPath, "HOME=" + dir, "XDG_RUNTIME_DIR=" + dir}, "rootlesskit",
				"--state-dir="+filepath.Join(dir, d), "--net=pasta", "--pasta-binary=/usr/bin/pasta", "--port-driver="+d, "true")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			const want = `network "pasta" requires port driver "none" or "implicit"`
			if err == nil || !strings.Contains(string(out), want) {
				t.Errorf("rootlesskit --net=pasta --port-driver=%s: %v\n%s\nwant a failure: %s", d, err, out, want)
			}
		}
	})

	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			peer := newPastaPeer(t, root, name)
			for _, v := range []struct {
				name, driver string
				noLoopback   bool // --disable-host-loopback: pasta gets --no-map-gw
				ipv6         bool // --ipv6: pasta does not get --ipv4-only
			}{{"implicit", "implicit", false, false}, {"none", "none", false, false},
				{"disable-host-loopback", "implicit", true, false}, {"ipv6", "implicit", false, true}} {
				driver := v.driver
				t.Run(v.name, func(t *testing.T) {
					t.Parallel()
					ctx := testContext(t, 2*time.Minute)
					rk := startPastaRootlesskit(t, ctx, root, peer, driver, v.noLoopback, v.ipv6)
					checkPastaRootlesskit(t, ctx, rk, driver, peer, v.noLoopback)
					if v.ipv6 {
						checkPastaRootlesskit6(t, ctx, rk, peer)
					}

					// rootlesskit exits when its command does, and ends pasta.
					rk.stdin.Close()
					if code := rk.waitExit(t, 15*time.Second); code != 0 {
						t.Errorf("%s: exit status %d after its command exited 0; want 0\nstderr:\n%s", rk.name, code, rk.stderr.String())
					}
					waitGone(t, rk.pasta, 10*time.Second, "after rootlesskit exited")
				})
			}
		})
	}
}

// pastaRootlesskit is a running `rootlesskit --net=pasta ... helper serve PORT`: TCP and UDP
// echo servers on PORT inside.
type pastaRootlesskit struct {
	*proc
	stdin io.Closer
	child *target  // rootlesskit's child: its namespaces are the network's
	pasta []procID // the peer's processes
	port  int
}

func startPastaRootlesskit(t *testing.T, ctx context.Context, root *trixieRoot, peer *pastaPeer, driver string, noLoopback, ipv6 bool) *pastaRootlesskit {
	t.Helper()
	dir := shortUserDir(t, "rk-")
	state := filepath.Join(dir, "state")
	rk := &pastaRootlesskit{port: freePort(t, "tcp")}
	args := []string{
		"rootlesskit", "--debug",
		"--state-dir=" + state,
		"--net=pasta", "--pasta-binary=" + peer.bin,
		"--port-driver=" + driver,
		"--copy-up=/etc", "--mtu=65520",
	}
	if noLoopback {
		args = append(args, "--disable-host-loopback")
	}
	if ipv6 {
		args = append(args, "--ipv6")
	}
	args = append(args, suite.helper, "serve", strconv.Itoa(rk.port))
	// Not ctx: the cleanup ends rootlesskit, its command's stdin first.
	cmd := root.command(context.Background(), []string{rootPath, envHelper + "=1", "HOME=" + dir, "XDG_RUNTIME_DIR=" + dir}, args...)
	cmd.Dir = dir
	rk.proc, rk.stdin, rk.child = runRootlesskit(t, cmd, state)
	// trixie-exec keeps its PID up to rootlesskit, which starts pasta itself (and may do so
	// after its command is running).
	rkPid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; {
		rk.pasta = withDescendants(findProcs(func(argv []string, ppid int) bool { return ppid == rkPid && isPasta(argv) }))
		if len(rk.pasta) > 0 {
			break
		}
		if time.Now().After(deadline) || rk.exited() {
			t.Fatalf("rootlesskit's command is ready, but no child of rootlesskit runs pasta")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return rk
}

// checkPastaRootlesskit6 is what --ipv6 adds. rootlesskit 2.0 then only leaves out
// --ipv4-only: its child configures no IPv6 address, and pasta gets --no-ra (and the
// namespace has no DHCPv6 client), so the namespace has a link-local address only. Given
// the host's address and a default route through its gateway, as pasta expects, IPv6 goes
// out; a server inside on IPv6 is forwarded from the host's ::1 and from the fake
// internet to the host's address.
func checkPastaRootlesskit6(t *testing.T, ctx context.Context, rk *pastaRootlesskit, peer *pastaPeer) {
	t.Helper()
	host6, gw6 := os.Getenv("USERNET_HOST6"), os.Getenv("USERNET_INET6")
	rk.child.nsenter(t, ctx, "ip", "-6", "addr", "add", host6+"/64", "dev", "tap0", "nodad")
	rk.child.nsenter(t, ctx, "ip", "-6", "route", "add", "default", "via", gw6, "dev", "tap0")

	// Out: a server of the fake internet, on an address of its own (the gateway's reaches
	// the host's loopback), one per peer: the peers run in parallel.
	far := "2001:db8::77"
	if !peer.isUsernet {
		far = "2001:db8::78"
	}
	ipRun(t, "-n", filepath.Base(suite.inetNetns), "addr", "add", far+"/128", "dev", "ui0", "nodad")
	t.Cleanup(func() {
		exec.Command("ip", "-n", filepath.Base(suite.inetNetns), "addr", "del", far+"/128", "dev", "ui0").Run()
	})
	ln := inetListenTCP(t, "["+far+"]:0")
	if err := tcpUp(t, ctx, rk.child, net.JoinHostPort(far, port(ln.Addr())), 1<<20, hashServer(t, ln)); err != nil {
		if peer.isUsernet {
			t.Fatal(err)
		}
		// The real pasta 2025 now and then ends such an upload early (the
		// server gets the FIN before the last bytes): its difference,
		// written down in docs/pasta.md, not a failure of this suite.
		t.Logf("%s (known of pasta 2025, docs/pasta.md)", err)
	}

	// In: an IPv6 server inside (made from here, root: sockets stay in the namespace they
	// are made in), which -t auto publishes.
	var in net.Listener
	if err := inNetns(fmt.Sprintf("/proc/%d/ns/net", rk.child.pid), func() (err error) {
		in, err = net.Listen("tcp6", "[::]:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	echoServer(t, in)
	p := port(in.Addr())
	for _, addr := range []string{"[::1]:" + p, "[" + host6 + "]:" + p} {
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if err = hostTCPEcho(ctx, addr, 64<<10); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("TCP %s to the server inside: %v", addr, err)
		}
	}
	// From elsewhere: the fake internet, to the host's address.
	var c net.Conn
	if err := inNetns(suite.inetNetns, func() (err error) {
		c, err = net.DialTimeout("tcp", "["+host6+"]:"+p, 5*time.Second)
		return err
	}); err != nil {
		t.Errorf("from the fake internet to [%s]:%s: %v", host6, p, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "from afar")
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "from afar" {
		t.Errorf("from the fake internet to [%s]:%s: echo %q, %v", host6, p, b, err)
	}
}

func checkPastaRootlesskit(t *testing.T, ctx context.Context, rk *pastaRootlesskit, driver string, peer *pastaPeer, noLoopback bool) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(rk.port))
	if driver == "implicit" {
		// pasta's -t auto and -u auto: it scans the namespace's listening sockets and binds
		// the same ports on the host.
		start := time.Now()
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(start) > 15*time.Second {
				t.Fatalf("the server's port %d inside: not reachable at %s after %v: %v", rk.port, addr, time.Since(start).Round(time.Millisecond), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("port %d reachable on the host %v after the server listened", rk.port, time.Since(start).Round(time.Millisecond))
		if err := hostTCPEcho(ctx, addr, clientTransfer); err != nil {
			t.Errorf("TCP %s (implicit): %v", addr, err)
		}
		waitUDPEcho(t, addr)
		if err := hostUDPEcho(addr, 5); err != nil {
			t.Errorf("UDP %s (implicit): %v", addr, err)
		}
	} else {
		// Two of pasta's scan periods: the port must stay unpublished.
		time.Sleep(2500 * time.Millisecond)
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("--port-driver=none: connected to %s, the server's port inside; want nothing published", addr)
		}
	}

	switch {
	case !noLoopback:
		// The host's loopback through the gateway (rootlesskit passes no --no-map-gw).
		hp, got := hostHashServer(t)
		checkTCPUp(t, ctx, rk.child, "10.0.2.2:"+hp, 1<<20, got)
	case peer.isUsernet:
		// --no-map-gw on rootlesskit's own 10.0.2.0/24: a virtual network whose gateway
		// leads nowhere, as slirp4netns's --disable-host-loopback (docs/pasta.md).
		// pasta would send the connection to 10.0.2.2 on the host's network, which the
		// fake internet flags as a leak: it is not tried with pasta.
		hp, _ := hostHashServer(t)
		checkDial(t, rk.child, "10.0.2.2:"+hp, "ENETUNREACH")
	}

	// DNS: rootlesskit's resolv.conf names 10.0.2.3, which pasta forwards to the
	// nameserver of the host's resolv.conf (the suite's server on 127.0.0.53).
	args := []string{"--user", "--net", "--mount", "--preserve-credentials", "--target", strconv.Itoa(rk.child.pid), "--",
		suite.helper, "resolve", "rootlesskit.usernet.test"}
	cmd := asUser(exec.CommandContext(ctx, "nsenter", args...))
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = "/"
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("in rootlesskit's namespaces: resolve: %v", err)
	}
	var res ResolveResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("resolve: output %q: %v", raw, err)
	}
	if !slices.Equal(res.ResolvNS, []string{"10.0.2.3"}) || !slices.Contains(res.Addrs, resolvAnswer) {
		t.Errorf("in rootlesskit's namespaces, resolving rootlesskit.usernet.test: %+v; want nameserver 10.0.2.3 and address %s", res, resolvAnswer)
	}
}
