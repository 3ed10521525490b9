package integration

// Real clients: rootlesskit and rootless podman run the binary under test in slirp4netns's
// place, unchanged, as the unprivileged test user. Everything stays inside the suite's
// private host netns: the servers are in the namespaces the clients make, the clients
// are reached on the host's 127.0.0.1, and podman runs a local image (never pulls).

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"golang.org/x/sys/unix"
)

const clientTransfer = 2 << 20 // bytes through each forward, checked by sha256

var binHelp struct {
	once sync.Once
	text string
}

// binHas says whether `BIN --help` lists flag: the clients probe --help the same way and
// leave out what is not there.
func binHas(flag string) bool {
	binHelp.once.Do(func() {
		out, _ := exec.Command(suite.bin, "--help").CombinedOutput()
		binHelp.text = string(out)
	})
	return strings.Contains(binHelp.text, flag)
}

// needAPISocket skips t until the binary under test offers --api-socket (the port drivers
// and handlers called "slirp4netns" forward ports through it).
func needAPISocket(t *testing.T, who string) {
	t.Helper()
	if !suite.hasAPISocket {
		t.Skipf("%s --help does not list --api-socket: %s forwards ports through slirp4netns's API socket "+
			"(add_hostfwd, list_hostfwd, remove_hostfwd), which the binary does not offer yet", suite.bin, who)
	}
}

// --- rootlesskit ---

type rkOpts struct {
	portDriver          string // "builtin" or "slirp4netns"
	disableHostLoopback bool
	sandbox             bool // --slirp4netns-sandbox=true --slirp4netns-seccomp=true
}

// rootlesskitRun is a running `rootlesskit ... helper serve 80 81`: TCP and UDP echo servers
// on ports 80 and 81 inside, 80 published on tcpPort and udpPort of the host's 127.0.0.1.
type rootlesskitRun struct {
	*proc
	stdin   io.Closer
	sock    string  // rootlesskit's API socket, for rootlessctl
	child   *target // rootlesskit's child: its namespaces are the network's
	usernet []procID
	tcpPort int
	udpPort int
}

func startRootlesskit(t *testing.T, o rkOpts) *rootlesskitRun {
	t.Helper()
	ensureSubIDs(t)
	dir := shortUserDir(t, "rk-")
	state := filepath.Join(dir, "state")
	rk := &rootlesskitRun{sock: filepath.Join(state, "api.sock"), tcpPort: freePort(t, "tcp"), udpPort: freePort(t, "udp")}
	args := []string{
		"--state-dir=" + state,
		"--net=slirp4netns", "--slirp4netns-binary=" + suite.bin,
		"--port-driver=" + o.portDriver,
		"--copy-up=/etc", "--mtu=65520",
		"-p", fmt.Sprintf("127.0.0.1:%d:80/tcp", rk.tcpPort),
		"-p", fmt.Sprintf("127.0.0.1:%d:80/udp", rk.udpPort),
	}
	if o.disableHostLoopback {
		args = append(args, "--disable-host-loopback")
	}
	if o.sandbox {
		args = append(args, "--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true")
	}
	args = append(args, suite.helper, "serve", "80", "81")
	cmd := asUser(exec.Command("rootlesskit", args...))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), envHelper+"=1", "HOME="+dir, "XDG_RUNTIME_DIR="+dir)
	rk.proc, rk.stdin, rk.child = runRootlesskit(t, cmd, state)
	rkPid := cmd.Process.Pid
	rk.usernet = withDescendants(findProcs(func(argv []string, ppid int) bool { return ppid == rkPid && argv[0] == suite.bin }))
	if len(rk.usernet) == 0 {
		t.Fatalf("%s is ready, but no child of it runs %s", rk.name, suite.bin)
	}
	return rk
}

// nsenterMount runs argv in the child's user, net and mount namespaces (where rootlesskit's
// copied-up /etc/resolv.conf is), as the unprivileged user, and returns its stdout.
func (rk *rootlesskitRun) nsenterMount(t *testing.T, ctx context.Context, argv ...string) string {
	t.Helper()
	args := append([]string{"--user", "--net", "--mount", "--preserve-credentials", "--target", strconv.Itoa(rk.child.pid), "--"}, argv...)
	cmd := asUser(exec.CommandContext(ctx, "nsenter", args...))
	cmd.Env = append(os.Environ(), envHelper+"=1")
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("in rootlesskit's namespaces: %s: %v\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// rootlessctl runs rootlessctl against rk's API socket as the unprivileged user.
func (rk *rootlesskitRun) rootlessctl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := asUser(exec.CommandContext(ctx, "rootlessctl", append([]string{"--socket", rk.sock}, args...)...))
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("rootlessctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// rkPort is one line of `rootlessctl list-ports --json`.
type rkPort struct {
	ID   int `json:"id"`
	Spec struct {
		Proto      string `json:"proto"`
		ParentIP   string `json:"parentIP"`
		ParentPort int    `json:"parentPort"`
		ChildPort  int    `json:"childPort"`
	} `json:"spec"`
}

func (rk *rootlesskitRun) listPorts(t *testing.T, ctx context.Context) []rkPort {
	t.Helper()
	var ports []rkPort
	dec := json.NewDecoder(strings.NewReader(rk.rootlessctl(t, ctx, "list-ports", "--json")))
	for dec.More() {
		var p rkPort
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("rootlessctl list-ports --json: %v", err)
		}
		ports = append(ports, p)
	}
	return ports
}

// hasPort says whether ports has id (-1: any) forwarding parentPort to childPort.
func hasPort(ports []rkPort, id int, proto string, parentPort, childPort int) bool {
	return slices.ContainsFunc(ports, func(p rkPort) bool {
		return (id < 0 || p.ID == id) && p.Spec.Proto == proto && p.Spec.ParentPort == parentPort && p.Spec.ChildPort == childPort
	})
}

// TestRootlesskit runs `rootlesskit --net=slirp4netns --slirp4netns-binary=BIN` with a
// server inside, and checks what a rootlesskit user relies on: the published TCP and UDP
// ports, ports added and removed at run time with rootlessctl, the host's loopback at
// 10.0.2.2 (or its refusal with --disable-host-loopback), DNS through 10.0.2.3 via the
// resolv.conf rootlesskit writes, and that the binary exits when rootlesskit does.
func TestRootlesskit(t *testing.T) {
	setup(t)
	needCommands(t, "rootlesskit", "rootlessctl", "newuidmap", "newgidmap")
	t.Parallel()
	for _, tc := range []struct {
		name string
		o    rkOpts
	}{
		{"builtin", rkOpts{portDriver: "builtin"}},
		{"builtin-no-loopback", rkOpts{portDriver: "builtin", disableHostLoopback: true}},
		{"builtin-sandbox", rkOpts{portDriver: "builtin", sandbox: true}},
		{"slirp4netns", rkOpts{portDriver: "slirp4netns"}},
		{"slirp4netns-no-loopback", rkOpts{portDriver: "slirp4netns", disableHostLoopback: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.o.portDriver == "slirp4netns" {
				needAPISocket(t, "rootlesskit --port-driver=slirp4netns")
			}
			if tc.o.sandbox && !(binHas("--enable-sandbox") && binHas("--enable-seccomp")) {
				t.Skipf("%s --help does not list --enable-sandbox and --enable-seccomp (rootlesskit --slirp4netns-sandbox=true refuses such a binary)", suite.bin)
			}
			t.Parallel()
			ctx := testContext(t, defaultTimeout)
			rk := startRootlesskit(t, tc.o)
			checkRootlesskit(t, ctx, rk, tc.o)

			// rootlesskit exits when its command does; the binary must follow.
			rk.stdin.Close()
			if code := rk.waitExit(t, 15*time.Second); code != 0 {
				t.Errorf("%s: exit status %d after its command exited 0; want 0\nstderr:\n%s", rk.name, code, rk.stderr.String())
			}
			waitGone(t, rk.usernet, 10*time.Second, "after rootlesskit exited")
		})
	}
}

func checkRootlesskit(t *testing.T, ctx context.Context, rk *rootlesskitRun, o rkOpts) {
	t.Helper()
	// Published ports.
	tcpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(rk.tcpPort))
	if err := hostTCPEcho(ctx, tcpAddr, clientTransfer); err != nil {
		t.Errorf("-p %s:80/tcp: %v", tcpAddr, err)
	}
	udpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(rk.udpPort))
	if o.portDriver == "slirp4netns" && o.disableHostLoopback && !suite.isUsernet {
		// libslirp sends the reply to the host's 127.0.0.1 as traffic to 10.0.2.2, which
		// --disable-host-loopback drops (podman issue #4586).
		t.Log("not checking the UDP forward: slirp4netns drops the replies with --disable-host-loopback")
	} else if err := hostUDPEcho(udpAddr, 5); err != nil {
		t.Errorf("-p %s:80/udp: %v", udpAddr, err)
	}

	// Ports added and removed through rootlesskit's API.
	p := freePort(t, "tcp")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	out := strings.TrimSpace(rk.rootlessctl(t, ctx, "add-ports", fmt.Sprintf("127.0.0.1:%d:81/tcp", p)))
	id, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("rootlessctl add-ports 127.0.0.1:%d:81/tcp printed %q; want the new port's ID", p, out)
	}
	if ports := rk.listPorts(t, ctx); !hasPort(ports, id, "tcp", p, 81) || !hasPort(ports, -1, "tcp", rk.tcpPort, 80) {
		t.Errorf("rootlessctl list-ports: %+v; want the -p ports and ID %d: tcp %d → 81", ports, id, p)
	}
	if err := hostTCPEcho(ctx, addr, 64<<10); err != nil {
		t.Errorf("port %s added by rootlessctl: %v", addr, err)
	}
	rk.rootlessctl(t, ctx, "remove-ports", strconv.Itoa(id))
	if ports := rk.listPorts(t, ctx); slices.ContainsFunc(ports, func(x rkPort) bool { return x.ID == id }) {
		t.Errorf("rootlessctl list-ports after remove-ports %d: %+v; want it gone", id, ports)
	}
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("connect to %s after rootlessctl remove-ports %d: connected; want refused", addr, id)
	} else if errName(err) != "ECONNREFUSED" {
		t.Errorf("connect to %s after rootlessctl remove-ports %d: %v; want ECONNREFUSED", addr, id, err)
	}

	// The host's loopback through the gateway.
	hp, got := hostHashServer(t)
	if o.disableHostLoopback {
		checkDial(t, rk.child, "10.0.2.2:"+hp, "ENETUNREACH")
	} else {
		checkTCPUp(t, ctx, rk.child, "10.0.2.2:"+hp, 1<<20, got)
	}

	// DNS: rootlesskit's resolv.conf names 10.0.2.3, which relays to the nameserver of the
	// host's resolv.conf (the suite's server on 127.0.0.53).
	if o.disableHostLoopback && !suite.isUsernet {
		t.Log("not checking DNS: slirp4netns cannot reach a 127.x upstream with --disable-host-loopback (docs/differences.md)")
		return
	}
	var res ResolveResult
	raw := rk.nsenterMount(t, ctx, suite.helper, "resolve", "rootlesskit.usernet.test")
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		t.Fatalf("resolve: output %q: %v", raw, err)
	}
	if !slices.Equal(res.ResolvNS, []string{"10.0.2.3"}) || !slices.Contains(res.Addrs, resolvAnswer) {
		t.Errorf("in rootlesskit's namespaces, resolving rootlesskit.usernet.test: %+v; want nameserver 10.0.2.3 and address %s", res, resolvAnswer)
	}
}

// TestRootlesskitKilled: rootlesskit starts the binary with Pdeathsig SIGKILL; when
// rootlesskit is SIGKILLed, no process of the binary may stay behind (also after the
// sandbox re-executed it).
func TestRootlesskitKilled(t *testing.T) {
	setup(t)
	needCommands(t, "rootlesskit", "newuidmap", "newgidmap")
	t.Parallel()
	for _, sandbox := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "sandbox"}[sandbox], func(t *testing.T) {
			if sandbox && !(binHas("--enable-sandbox") && binHas("--enable-seccomp")) {
				t.Skipf("%s --help does not list --enable-sandbox and --enable-seccomp", suite.bin)
			}
			t.Parallel()
			rk := startRootlesskit(t, rkOpts{portDriver: "builtin", sandbox: sandbox})
			rk.cmd.Process.Signal(syscall.SIGKILL)
			<-rk.done
			waitGone(t, rk.usernet, 10*time.Second, "after rootlesskit was SIGKILLed")
		})
	}
}

// --- rootless podman ---

const podmanImage = "localhost/usernet-busybox:test"

// podmanEnv is a rootless podman set-up of the test user: its own HOME, XDG_RUNTIME_DIR,
// containers.conf (network_cmd_path = the binary under test), storage (vfs) and a busybox
// image imported from a local tar.
type podmanEnv struct {
	dir string // HOME, configuration, the image's tar
	run string // XDG_RUNTIME_DIR
	env []string
}

// podmanConfig makes the directories and files of a rootless Podman of the test user:
// containers.conf (engineConf), vfs storage, no registries, and the environment that points
// Podman at them, after pathEnv and extraEnv.
func podmanConfig(t *testing.T, engineConf, pathEnv string, extraEnv ...string) *podmanEnv {
	t.Helper()
	dir := shortUserDir(t, "pm-")
	// XDG_RUNTIME_DIR is short, like /run/user/UID: podman puts the API socket of
	// port_handler=slirp4netns at $XDG_RUNTIME_DIR/libpod/tmp/<64 hex digits>.net, and a unix
	// socket path has at most 107 bytes.
	run, err := os.MkdirTemp("/tmp", "upm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	cfg := filepath.Join(dir, "config")
	if err := os.Mkdir(cfg, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{run, cfg} {
		if err := os.Chown(d, int(suite.uid), int(suite.gid)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"containers.conf": engineConf,
		"storage.conf":    "[storage]\ndriver = \"vfs\"\n",
		"registries.conf": "# none: the tests never pull\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := append([]string{
		pathEnv,
		"HOME=" + dir,
		"XDG_RUNTIME_DIR=" + run,
		"XDG_CONFIG_HOME=" + cfg,
		"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf"),
	}, extraEnv...)
	return &podmanEnv{dir: dir, run: run, env: env}
}

func newPodmanEnv(t *testing.T) *podmanEnv {
	t.Helper()
	ensureSubIDs(t)
	if err := ensureCgroupMounts(); err != nil {
		t.Fatalf("podman needs the cgroup file systems: %v", err)
	}
	busybox := staticBusybox(t)
	e := podmanConfig(t, fmt.Sprintf(`[containers]
dns_servers = ["10.0.2.3"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
network_cmd_path = %q
`, suite.bin), "PATH="+os.Getenv("PATH"))
	dir := e.dir
	cleanPodmanUp(t, e.podman, e)

	importBusybox(t, e.podman, dir, busybox)
	return e
}

// importBusybox imports podmanImage, busybox alone, into the storage podman (a Podman of the
// test user) uses; dir holds the tar.
func importBusybox(t *testing.T, podman func(context.Context, ...string) (string, error), dir, busybox string) {
	t.Helper()
	tarPath := filepath.Join(dir, "rootfs.tar")
	if err := writeBusyboxTar(tarPath, busybox); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 2*time.Minute)
	if out, err := podman(ctx, "import", "--change", `CMD ["/bin/sh"]`, tarPath, podmanImage); err != nil {
		t.Fatalf("podman import: %v\n%s", err, out)
	}
}

// podman runs podman as the test user with e's configuration; it returns stdout and stderr.
func (e *podmanEnv) podman(ctx context.Context, args ...string) (string, error) {
	cmd := asUser(exec.CommandContext(ctx, "podman", args...))
	cmd.Env = e.env
	cmd.Dir = e.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("podman %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// killPause ends the rootless pause process that podman left to keep its user namespace.
func (e *podmanEnv) killPause(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(e.run, "libpod", "tmp", "pause.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	var st syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st) != nil || st.Uid != suite.uid {
		return // gone, or not ours
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// staticBusybox returns the path of a statically linked busybox (busybox-static), which
// works alone in a container image.
func staticBusybox(t *testing.T) string {
	t.Helper()
	needCommands(t, "busybox")
	path, _ := exec.LookPath("busybox")
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked; the image needs busybox-static", path)
		}
	}
	return path
}

// writeBusyboxTar writes a root file system with only busybox in it.
func writeBusyboxTar(path, busybox string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "www"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: now}); err != nil {
		return err
	}
	if _, err := tw.Write(bb); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

var cgroupMounts struct {
	once sync.Once
	err  error
}

// ensureCgroupMounts mounts the cgroup hierarchies of this process at /sys/fs/cgroup when
// none is mounted. `ip netns exec` (netns.sh) gives the suite a fresh /sys without them,
// and then runc fails every container with "no cgroup mount found in mountinfo". The mounts
// are made in the suite's own mount namespace (ip netns exec's), never the machine's.
func ensureCgroupMounts() error {
	cgroupMounts.once.Do(func() { cgroupMounts.err = mountCgroups() })
	return cgroupMounts.err
}

func mountCgroups() error {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if _, after, ok := strings.Cut(l, " - "); ok {
			if f := strings.Fields(after); len(f) > 0 && (f[0] == "cgroup" || f[0] == "cgroup2") {
				return nil
			}
		}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	var v1 []string // controllers of each v1 hierarchy, e.g. "cpu,cpuacct", "name=systemd"
	v2 := false
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" {
			v2 = true
		} else if f[1] != "" {
			v1 = append(v1, f[1])
		}
	}
	const root = "/sys/fs/cgroup"
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if len(v1) == 0 {
		if !v2 {
			return fmt.Errorf("/proc/self/cgroup names no hierarchy:\n%s", b)
		}
		if err := unix.Mount("cgroup2", root, "cgroup2", flags, ""); err != nil {
			return fmt.Errorf("mount cgroup2 on %s: %w", root, err)
		}
		return nil
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", flags, "mode=755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", root, err)
	}
	for _, c := range v1 {
		name, opts := c, c
		if n, ok := strings.CutPrefix(c, "name="); ok {
			name, opts = n, "none,"+c
		}
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("cgroup", dir, "cgroup", flags, opts); err != nil {
			return fmt.Errorf("mount cgroup -o %s on %s: %w", opts, dir, err)
		}
	}
	if v2 {
		dir := filepath.Join(root, "unified")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("cgroup2", dir, "cgroup2", flags, ""); err != nil {
			return fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
		}
	}
	return nil
}

// container is a running `podman run -d ... busybox httpd` serving its own directory.
type container struct {
	name    string
	port    int
	blobSHA string
	usernet []procID
}

// runContainer starts busybox httpd in a container on network "slirp4netns:OPTS", published
// on 127.0.0.1:PORT, and waits until the host gets the container's name from it.
func (e *podmanEnv) runContainer(t *testing.T, ctx context.Context, name, netOpts string) *container {
	t.Helper()
	www := shortUserDir(t, "www-")
	blob := make([]byte, clientTransfer)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	c := &container{name: name, port: freePort(t, "tcp"), blobSHA: fmt.Sprintf("%x", sum)}
	for f, data := range map[string][]byte{"blob": blob, "name": []byte(name)} {
		p := filepath.Join(www, f)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := e.podman(ctx, "run", "-d", "--name", name, "--pull=never",
		"--network", "slirp4netns:"+netOpts,
		"-p", fmt.Sprintf("127.0.0.1:%d:80", c.port),
		"-v", www+":/www:ro",
		podmanImage, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	key, err := e.podman(ctx, "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name)
	key = strings.TrimSpace(key)
	if err != nil || key == "" {
		t.Fatalf("podman inspect %s: %v: %q", name, err, key)
	}
	c.usernet = withDescendants(findProcs(func(argv []string, _ int) bool { return argv[0] == suite.bin && slices.Contains(argv, key) }))
	if len(c.usernet) == 0 {
		logs, _ := e.podman(ctx, "logs", name)
		t.Fatalf("container %s runs, but no process runs %s for its netns %s; container log:\n%s", name, suite.bin, key, logs)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := httpGet(ctx, c.port, "/name")
		if err == nil && string(got) == name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET http://127.0.0.1:%d/name (container %s): %q, %v; want %q", c.port, name, got, err, name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

func httpGet(ctx context.Context, port int, path string) ([]byte, error) {
	return httpGetURL(ctx, fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
}

func httpGetURL(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	// No proxy from the environment, no keep-alive: each request is a new connection.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return b, err
}

// check fetches the container's 2 MiB file through the forward and compares its sha256.
func (c *container) check(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, p := range c.usernet {
		if !p.alive() {
			t.Errorf("container %s runs, but %s has exited", c.name, p)
		}
	}
	b, err := httpGet(ctx, c.port, "/blob")
	if err != nil {
		t.Errorf("GET http://127.0.0.1:%d/blob (container %s): %v", c.port, c.name, err)
		return
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != c.blobSHA {
		t.Errorf("GET http://127.0.0.1:%d/blob (container %s): %d bytes sha256 %s; want %d bytes sha256 %s", c.port, c.name, len(b), got, clientTransfer, c.blobSHA)
	}
}

// TestPodman runs rootless podman with network_cmd_path = the binary under test:
// `podman run --network slirp4netns -p 127.0.0.1:P:80` with busybox httpd inside, two
// containers at once, for both port handlers; the binary must exit after `podman rm -f`.
func TestPodman(t *testing.T) {
	setup(t)
	needCommands(t, "podman", "runc", "conmon", "newuidmap", "newgidmap")
	t.Parallel()
	e := newPodmanEnv(t)
	for _, handler := range []string{"rootlesskit", "slirp4netns"} {
		t.Run(handler, func(t *testing.T) {
			if handler == "slirp4netns" {
				needAPISocket(t, "podman's port_handler=slirp4netns")
			}
			t.Parallel()
			ctx := testContext(t, 3*time.Minute)
			opts := "port_handler=" + handler
			c1 := e.runContainer(t, ctx, "usernet-"+handler+"-1", opts)
			c2 := e.runContainer(t, ctx, "usernet-"+handler+"-2", opts)
			c1.check(t, ctx)
			c2.check(t, ctx)

			// DNS: podman passes --disable-host-loopback; usernet still relays 10.0.2.3 to
			// the host's 127.0.0.53, slirp4netns cannot.
			if suite.isUsernet {
				out, err := e.podman(ctx, "exec", c1.name, "/bin/busybox", "nslookup", "podman.usernet.test", "10.0.2.3")
				if err != nil || !strings.Contains(out, resolvAnswer) {
					t.Errorf("in container %s, nslookup podman.usernet.test 10.0.2.3: %v\n%s\nwant address %s", c1.name, err, out, resolvAnswer)
				}
			}

			if out, err := e.podman(ctx, "rm", "--force", "--time", "0", c1.name); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			waitGone(t, c1.usernet, 10*time.Second, "after podman rm --force "+c1.name)
			c2.check(t, ctx) // the other container's network is untouched
			if out, err := e.podman(ctx, "rm", "--force", "--time", "0", c2.name); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			waitGone(t, c2.usernet, 10*time.Second, "after podman rm --force "+c2.name)
		})
	}
}

// runRootlesskit starts cmd, a rootlesskit whose command is `helper serve` (it prints "ready"
// on stdout), waits until the command is ready and rootlesskit has written state/child_pid,
// and returns rootlesskit, its command's stdin (closing it ends the command) and its child.
// Cleanup closes that stdin, gives rootlesskit 10 s to exit, then stops it.
func runRootlesskit(t *testing.T, cmd *exec.Cmd, state string) (*proc, io.Closer, *target) {
	t.Helper()
	p, stdin, out := startPiped(t, cmd)
	ready := lineWaiter(out, "ready")
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
		p.stop()
		if t.Failed() {
			t.Logf("%s\nexit: %v\nstderr:\n%s", p.name, p.err, p.stderr.String())
		}
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("%s exited before its command was ready: %v\nstderr:\n%s", p.name, p.err, p.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: command not ready after 30s\nstderr:\n%s", p.name, p.stderr.String())
	}
	// The command may say "ready" before rootlesskit has written child_pid.
	var pid int
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, err := os.ReadFile(filepath.Join(state, "child_pid"))
		if err == nil {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/child_pid: %q, %v", state, b, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, stdin, &target{pid: pid}
}

// cleanPodmanUp removes, when t ends, every container podman (a Podman of env) made, and
// its pause process.
func cleanPodmanUp(t *testing.T, podman func(context.Context, ...string) (string, error), env *podmanEnv) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if out, err := podman(ctx, "rm", "--all", "--force", "--time", "0"); err != nil {
			t.Logf("podman rm --all: %v: %s", err, out)
		}
		env.killPause(t)
	})
}
