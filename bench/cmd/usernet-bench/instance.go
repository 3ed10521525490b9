package main

// An instance is one backend serving one fresh unprivileged user+net namespace.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	guestIperfPort = 5201 // iperf3 -s inside the namespace, for port forwards
	guestEchoPort  = 5202 // usernet-bench echo inside the namespace, for rr/crr through a forward
	tapName        = "tap0"
)

type instance struct {
	d       *driver
	backend string
	mtu     int
	label   string // e.g. "usernet/mtu65520"
	fwd     bool   // set up port forwards 127.0.0.1:fwdPort → :5201 and fwdEchoPort → :5202

	holder      *proc // unshare ... sleep: owns the namespaces
	nsPID       int
	be          *proc // the backend
	argv        []string
	apiSock     string
	fwdPort     int // → iperf3 -s in the namespace; 0 when the forwards are not up
	fwdEchoPort int // → the echo server in the namespace
	fwdAdded    bool

	iperfPort int   // host iperf3 server on 127.0.0.1, for this instance only
	iperf     *proc // host iperf3 -s
	nsIperf   *proc // iperf3 -s inside the namespace (port forward target)
	nsEcho    *proc // usernet-bench echo inside the namespace (port forward target)

	readyFD, polled time.Duration // startup
	dead            string        // why this instance can run nothing more
}

func (d *driver) newInstance(backend string, mtu int, fwd bool) *instance {
	return &instance{d: d, backend: backend, mtu: mtu, fwd: fwd, label: fmt.Sprintf("%s-mtu%d", backend, mtu)}
}

// ns prefixes argv to run it inside the instance's namespaces, as their root.
func (in *instance) ns(argv ...string) []string {
	return append([]string{"nsenter", "-U", "-n", "--preserve-credentials", "-t", strconv.Itoa(in.nsPID), "--"}, argv...)
}

// inNS is a command that runs inside the instance's namespaces.
func (in *instance) inNS(argv ...string) *exec.Cmd {
	a := in.ns(argv...)
	return exec.Command(a[0], a[1:]...)
}

func (in *instance) pid() int { return in.be.cmd.Process.Pid }

// hasReadyFD: pasta's command line has no ready fd (its PID file is written before the tap
// is configured), so usernet-pasta, which gets the same arguments, goes without one too.
func (in *instance) hasReadyFD() bool { return !pastaCLI(in.backend) }

// start makes the namespaces, starts the poller and then the backend, and waits until the
// tap is configured. It fills in readyFD (if the backend has one) and polled.
func (in *instance) start() error {
	d := in.d
	// 1. The namespaces, held by a sleep. No --fork: the PID we get is the one inside.
	holder := exec.Command("unshare", "--user", "--map-root-user", "--net", "--mount", "--", "sh", "-c", "echo up; exec sleep infinity")
	r, err := holder.StdoutPipe()
	if err != nil {
		return err
	}
	if in.holder, err = d.spawn(in.label+"-ns", holder); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if _, _, err := waitLine(lines(r), "up", 10*time.Second); err != nil {
		return fmt.Errorf("unshare --user --map-root-user --net --mount: %w: %s", err, in.holder.logTail())
	}
	in.nsPID = holder.Process.Pid

	// 2. TIME_WAIT ports: the crr workload makes a few thousand connections a second from
	// the namespace, and closes first (as netperf's TCP_CRR does).
	if _, err := d.run(10*time.Second, in.ns("sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range")...); err != nil {
		d.note("could not set tcp_tw_reuse/ip_local_port_range in the namespace: %v", err)
	}

	// 3. The poller, running before the backend starts.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	poll := in.inNS(d.self, "waitnet", "-dev", tapName, "-addr", "10.0.2.100", "-gw", "10.0.2.2", "-timeout", "30s")
	poll.Stdout = pw
	pp, err := d.spawn(in.label+"-waitnet", poll)
	pw.Close()
	if err != nil {
		pr.Close()
		return err
	}
	defer pp.stop(time.Second)
	plines := lines(pr)
	if _, _, err := waitLine(plines, "polling", 10*time.Second); err != nil {
		return fmt.Errorf("waitnet: %w: %s", err, pp.logTail())
	}

	// 4. The backend.
	in.argv, err = in.command()
	if err != nil {
		return err
	}
	cmd := exec.Command(in.argv[0], in.argv[1:]...)
	if env := usernetEnv(in.backend); env != "" {
		cmd.Env = append(os.Environ(), env)
	}
	var rr *os.File
	if in.hasReadyFD() {
		var rw *os.File
		if rr, rw, err = os.Pipe(); err != nil {
			return err
		}
		defer rr.Close()
		cmd.ExtraFiles = []*os.File{rw} // fd 3
		defer rw.Close()
	}
	t0 := time.Now()
	if in.be, err = d.spawn(in.label, cmd); err != nil {
		return fmt.Errorf("start %s: %w", in.backend, err)
	}
	if len(cmd.ExtraFiles) > 0 {
		cmd.ExtraFiles[0].Close()
	}
	readyCh := make(chan error, 1)
	if rr != nil {
		go func() {
			b := make([]byte, 1)
			n, err := rr.Read(b)
			if n == 1 {
				in.readyFD = time.Since(t0)
				readyCh <- nil
				return
			}
			if err == nil || err == io.EOF {
				err = errors.New("ready fd closed without a byte")
			}
			readyCh <- err
		}()
	} else {
		readyCh <- nil
	}
	var tPoll time.Time
	_, tPoll, err = waitLine(plines, "ready", 30*time.Second)
	if err != nil {
		return fmt.Errorf("%s: tap not configured: %w; backend: %s", in.label, err, in.be.logTail())
	}
	in.polled = tPoll.Sub(t0)
	select {
	case err := <-readyCh:
		if err != nil {
			return fmt.Errorf("%s: %w", in.label, err)
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no ready fd after 30 s", in.label)
	}
	if !in.be.alive() {
		return fmt.Errorf("%s exited: %v: %s", in.label, in.be.err, in.be.logTail())
	}
	// What MTU did the tap really get?
	if out, err := d.run(10*time.Second, in.ns("cat", "/sys/class/net/"+tapName+"/mtu")...); err == nil {
		if got := strings.TrimSpace(string(out)); got != strconv.Itoa(in.mtu) {
			d.note("%s: asked for MTU %d, %s has MTU %s", in.label, in.mtu, tapName, got)
		}
	}
	return nil
}

// command is the backend's command line; the same addressing for all.
func (in *instance) command() ([]string, error) {
	d := in.d
	pid := strconv.Itoa(in.nsPID)
	mtu := strconv.Itoa(in.mtu)
	if in.fwd {
		var err error
		if in.fwdPort, err = freePort(); err != nil {
			return nil, err
		}
		if in.fwdEchoPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	switch in.backend {
	case "usernet", usernetNoOffload, usernetGVisor, "slirp4netns":
		argv := []string{d.binary(in.backend), "--configure", "--mtu=" + mtu, "--ready-fd=3"}
		if in.fwd && (in.backend == "slirp4netns" || isUsernet(in.backend) && d.usernetAPI) {
			in.apiSock = filepath.Join(filepath.Dir(d.logs), "api-"+in.label+".sock")
			argv = append(argv, "--api-socket="+in.apiSock)
		}
		return append(argv, pid, tapName), nil
	case "pasta", pasta2025, usernetPasta:
		tcp := "none"
		if in.fwd {
			tcp = fmt.Sprintf("127.0.0.1/%d:%d,%d:%d", in.fwdPort, guestIperfPort, in.fwdEchoPort, guestEchoPort)
		}
		// -f: stay in the foreground (we own its PID); -4: IPv4 only, like the others here;
		// -g 10.0.2.2 is mapped to the host's loopback by default (--no-map-gw turns it off);
		// no automatic port forwarding in either direction (-t/-u/-T/-U none).
		return append(d.pastaArgv0(in.backend), "-f", "-4", "--config-net", "-I", tapName, "-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2",
			"-m", mtu, "-t", tcp, "-u", "none", "-T", "none", "-U", "none", pid), nil
	}
	return nil, fmt.Errorf("unknown backend %q", in.backend)
}

// checkGateway fetches a fresh random token, served on the host's 127.0.0.1, from inside
// the namespace through 10.0.2.2. No load runs through an instance that fails this.
func (in *instance) checkGateway() error {
	d := in.d
	tok := randHex(16)
	d.srv.token.Store(&tok)
	out, err := d.run(20*time.Second, in.ns(d.self, "token-get", "-addr", fmt.Sprintf("10.0.2.2:%d", port(d.srv.tokenLn)))...)
	if err != nil {
		if !in.be.alive() {
			return fmt.Errorf("gateway check: %w; %s has exited (%v): %s", err, in.backend, in.be.err, in.be.logTail())
		}
		return fmt.Errorf("gateway check: %w", err)
	}
	if got := strings.TrimSpace(string(out)); got != tok {
		return fmt.Errorf("gateway check: 10.0.2.2 answered %q, want the token %q served on 127.0.0.1", got, tok)
	}
	return nil
}

// startIperf (re)starts this instance's iperf3 server on the host's 127.0.0.1.
func (in *instance) startIperf() error {
	d := in.d
	in.iperf.stop(time.Second)
	if in.iperfPort == 0 {
		p, err := freePort()
		if err != nil {
			return err
		}
		in.iperfPort = p
	}
	var err error
	in.iperf, err = d.spawn(in.label+"-iperf3s", exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(in.iperfPort)))
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if listening(readFile("/proc/net/tcp"), in.iperfPort) {
			return nil
		}
		if !in.iperf.alive() {
			break
		}
	}
	return fmt.Errorf("host iperf3 -s -p %d not listening: %s", in.iperfPort, in.iperf.logTail())
}

// startForward starts iperf3 -s and the echo server in the namespace and, for backends with
// an API socket, adds the forwards 127.0.0.1:fwdPort → :5201 and 127.0.0.1:fwdEchoPort →
// :5202 (the pasta backends got them on their command line).
func (in *instance) startForward() error {
	d := in.d
	in.nsIperf.stop(time.Second)
	in.nsEcho.stop(time.Second)
	var err error
	if in.nsIperf, err = d.spawn(in.label+"-iperf3s-ns", in.inNS("iperf3", "-s", "-p", strconv.Itoa(guestIperfPort))); err != nil {
		return err
	}
	if in.nsEcho, err = d.spawn(in.label+"-echo-ns", in.inNS(d.self, "echo", "-addr", fmt.Sprintf("0.0.0.0:%d", guestEchoPort))); err != nil {
		return err
	}
	up := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !up; time.Sleep(50 * time.Millisecond) {
		out, _ := d.run(5*time.Second, in.ns("cat", "/proc/net/tcp", "/proc/net/tcp6")...)
		up = listening(string(out), guestIperfPort) && listening(string(out), guestEchoPort)
	}
	if !up {
		return fmt.Errorf("iperf3 -s or the echo server in the namespace not listening: %s %s", in.nsIperf.logTail(), in.nsEcho.logTail())
	}
	if in.apiSock == "" || in.fwdAdded {
		return nil // pasta's command line: forwarded from the start; a restart keeps the forwards
	}
	for _, f := range [][2]int{{in.fwdPort, guestIperfPort}, {in.fwdEchoPort, guestEchoPort}} {
		req := fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":%d}}`, f[0], f[1])
		reply, err := apiCall(in.apiSock, req)
		if err != nil {
			return fmt.Errorf("add_hostfwd via %s: %w", in.apiSock, err)
		}
		if !strings.Contains(reply, `"return"`) || strings.Contains(reply, `"error"`) {
			return fmt.Errorf("add_hostfwd: %s", reply)
		}
	}
	in.fwdAdded = true
	return nil
}

// apiCall is one request on a slirp4netns-style API socket: write, half-close, read reply.
func apiCall(sock, req string) (string, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(io.LimitReader(c, 1<<16))
	return string(b), err
}

// stop kills the backend, its servers and the namespace holder.
func (in *instance) stop() {
	in.nsIperf.stop(time.Second)
	in.nsEcho.stop(time.Second)
	in.iperf.stop(time.Second)
	in.be.stop(3 * time.Second)
	in.holder.stop(time.Second)
}

// check marks the instance dead if its backend has gone.
func (in *instance) check() {
	if in.dead == "" && in.be != nil && !in.be.alive() {
		in.dead = fmt.Sprintf("%s exited during the run (%v): %s", in.backend, in.be.err, in.be.logTail())
		in.d.logf("   %s", in.dead)
	}
}
