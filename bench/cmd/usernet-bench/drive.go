package main

// drive: the orchestrator. It expects to run as an unprivileged user inside a private network
// namespace with lo up (bench/run.sh arranges both), so that nothing any backend does can
// reach another machine.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	quick          bool
	runs           int
	dur            time.Duration
	conns          int
	clients        []int         // concurrent clients of the rr/crr workloads
	udpFlows       int           // flows of the udp_flows workload
	fleet          int           // instances at once for mem_fleet
	closeWait      time.Duration // mem_closed: RSS this long after the connections closed
	out            string
	backends       []string
	usernet        string
	usernetDebug   string
	usernetVersion string
	slirp          string
	pasta          string
	usernetPasta   string // a symlink named pasta to the usernet binary
	pasta2025Root  string // the Debian trixie root with passt 2025 in it (integration/trixie.sh)
	command        string
	workloads      string
	workloadRE     *regexp.Regexp // nil: all workloads
}

type driver struct {
	ctx  context.Context
	opt  options
	self string
	logs string
	srv  *hostServers
	res  *Results
	byID map[string]*Metric

	usernetAPI bool // usernet --help lists --api-socket: port forwards work through it

	// active is the backends that run; the others (in unavailable, with the reason) are
	// reported n/a.
	active      []string
	unavailable map[string]string

	mu    sync.Mutex
	procs []*proc
	seq   int
}

func drive(args []string) error {
	fs := flag.NewFlagSet("drive", flag.ContinueOnError)
	var o options
	var backends string
	fs.BoolVar(&o.quick, "quick", false, "smoke mode: 1 run, short workloads")
	fs.IntVar(&o.runs, "runs", 5, "runs of each workload (median, min, max)")
	fs.DurationVar(&o.dur, "duration", 5*time.Second, "length of each timed workload run")
	fs.IntVar(&o.conns, "conns", 1000, "idle TCP connections for the memory workload")
	clients := fs.String("clients", "1,4,16,64", "concurrent clients of rr and crr (1 keeps the old names rr, crr, ...); -quick: 1,16")
	fs.IntVar(&o.udpFlows, "udp-flows", 1000, "UDP flows at once for udp_flows; -quick: 100")
	fs.IntVar(&o.fleet, "fleet", 50, "instances at once for mem_fleet; -quick: 10")
	fs.DurationVar(&o.closeWait, "close-wait", 5*time.Second, "mem_closed: RSS this long after the idle connections closed; -quick: 2s")
	fs.StringVar(&o.out, "out", "", "directory for results.json and logs/ (required)")
	fs.StringVar(&backends, "backends", "usernet,usernet-pasta,slirp4netns,pasta,pasta-2025", "comma-separated backends")
	fs.StringVar(&o.usernet, "usernet", "usernet", "usernet binary")
	fs.StringVar(&o.usernetDebug, "usernet-debug", "usernet-debug", "usernet built with -tags usernet_debug (the usernet-nooffload backend)")
	fs.StringVar(&o.usernetVersion, "usernet-version", "", "extra version text for usernet (e.g. git describe)")
	fs.StringVar(&o.slirp, "slirp4netns", "slirp4netns", "slirp4netns binary")
	fs.StringVar(&o.pasta, "pasta", "pasta", "pasta binary")
	fs.StringVar(&o.usernetPasta, "usernet-pasta", "", "a symlink named pasta to the usernet binary (the usernet-pasta backend; default: pasta beside -usernet)")
	fs.StringVar(&o.pasta2025Root, "pasta-2025-root", "/var/cache/usernet/trixie-root", "Debian trixie root whose passt is the pasta-2025 backend (integration/trixie.sh builds it)")
	fs.StringVar(&o.command, "command", "", "how the harness was invoked, for the report")
	fs.StringVar(&o.workloads, "workloads", "", "run only the workloads whose name matches this regexp (e.g. 'tcp_.*_1500|crr'); memory and startup always run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.out == "" {
		return errors.New("-out is required")
	}
	if o.quick {
		// Reduced forms (the report says so): CI's smoke run must stay short.
		o.runs = 1
		o.dur = time.Second
		*clients = "1,16"
		o.udpFlows = 100
		o.fleet = 10
		o.closeWait = 2 * time.Second
	}
	if o.clients, err = parseClients(*clients); err != nil {
		return fmt.Errorf("-clients: %w", err)
	}
	if o.udpFlows < 1 || o.fleet < 1 || o.conns < 1 {
		return errors.New("-conns, -udp-flows and -fleet must be at least 1")
	}
	if o.usernetPasta == "" {
		o.usernetPasta = filepath.Join(filepath.Dir(o.usernet), "pasta")
	}
	o.backends = strings.Split(backends, ",")
	if o.workloads != "" {
		if o.workloadRE, err = regexp.Compile(o.workloads); err != nil {
			return fmt.Errorf("-workloads: %w", err)
		}
	}

	// Children (the backends above all) inherit this limit: 1000 connections need 1000+ fds
	// in every backend, and slirp4netns does not raise its own soft limit. Setting it here
	// explicitly also stops the Go runtime from restoring the old soft limit in children.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}

	var self string
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	self, err = os.Executable()
	if err != nil {
		return err
	}
	d := &driver{ctx: ctx, opt: o, self: self, logs: filepath.Join(o.out, "logs"), byID: map[string]*Metric{}, unavailable: map[string]string{}}
	if err := os.MkdirAll(d.logs, 0o755); err != nil {
		return err
	}
	defer d.killAll()
	if err := d.preflight(); err != nil {
		return err
	}
	d.srv, err = startHostServers(ctx)
	if err != nil {
		return fmt.Errorf("host servers: %w", err)
	}
	start := time.Now()
	d.initResults(start)
	for _, b := range o.backends {
		if why, ok := d.unavailable[b]; ok {
			d.logf("   %s: n/a: %s", b, why)
			for _, m := range d.res.Metrics {
				d.naExpected(m.ID, b, why)
			}
			continue
		}
		d.active = append(d.active, b)
	}
	d.backendNotes()

	d.logf("== startup and memory (%d fresh instances per backend)", o.runs)
	d.startupPhase()
	if ctx.Err() == nil {
		d.logf("== memory of %d instances at once, per backend", o.fleet)
		d.fleetPhase()
	}
	if ctx.Err() == nil {
		d.logf("== throughput, request/response, CPU (%d runs × %v)", o.runs, o.dur)
		d.throughputPhase()
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}

	d.res.Meta.ElapsedS = time.Since(start).Seconds()
	d.res.Meta.LoadEnd = loadavg()
	for _, m := range d.res.Metrics {
		for _, s := range m.Results {
			s.finish()
			d.res.Meta.Failures += len(s.Errors)
		}
	}
	if lo := d.res.Loopback; lo != nil {
		lo.finish()
		d.res.Meta.Failures += len(lo.Errors)
	}
	b, err := json.MarshalIndent(d.res, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(o.out, "results.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	d.logf("wrote %s (%.0f s, %d failed samples)", path, d.res.Meta.ElapsedS, d.res.Meta.Failures)
	return nil
}

func (d *driver) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// preflight checks that we run where run.sh said: unprivileged, and in a network namespace
// whose only way out is nowhere.
func (d *driver) preflight() error {
	if os.Geteuid() == 0 {
		return errors.New("run as an unprivileged user (bench/run.sh drops to usernet-bench); pasta refuses root and the backends are meant to run unprivileged")
	}
	for _, b := range d.opt.backends {
		switch b {
		case pasta2025:
			// A missing peer is n/a, not an error: run.sh decides whether that may happen.
			if why := d.pasta2025Missing(); why != "" {
				d.unavailable[b] = why
			}
			continue
		case usernetPasta:
			// An older usernet (--rev) has no pasta mode: called as pasta it would take
			// slirp4netns's command line.
			if v := cmdOutput(d.opt.usernetPasta, "--version"); !strings.HasPrefix(v, "pasta") {
				d.unavailable[b] = fmt.Sprintf("this usernet has no pasta mode (%s --version: %q)", d.opt.usernetPasta, firstLine(v))
			}
			continue
		}
		if _, err := exec.LookPath(d.binary(b)); err != nil {
			return fmt.Errorf("backend %s: %w", b, err)
		}
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return err
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return err
	}
	out, _ := exec.Command(d.opt.usernet, "--help").CombinedOutput()
	// The port-forward workload goes through --api-socket (slirp4netns's add_hostfwd), as
	// for slirp4netns; a usernet built without it (an old --rev) gets n/a.
	d.usernetAPI = bytes.Contains(out, []byte("--api-socket"))
	return nil
}

func (d *driver) binary(backend string) string {
	switch backend {
	case "usernet", usernetGVisor:
		return d.opt.usernet
	case usernetNoOffload:
		return d.opt.usernetDebug
	case "slirp4netns":
		return d.opt.slirp
	case "pasta":
		return d.opt.pasta
	case usernetPasta:
		return d.opt.usernetPasta
	}
	return backend
}

// pastaArgv0 is how a backend that takes pasta's command line is started, before its
// arguments. pasta-2025 is trixie's passt run on this (older) host with trixie's own loader
// and libc, without entering the root; --argv0 pasta puts it in pasta mode. It is the AVX2
// build where the CPU has AVX2, as pasta started normally would pick: every build first tries
// to re-execute "/proc/self/exe" + ".avx2", which here names the loader, fails, and goes on
// as itself, so the choice is made here (bench/README.md, "pasta 2025").
func (d *driver) pastaArgv0(backend string) []string {
	if backend != pasta2025 {
		return []string{d.binary(backend)}
	}
	r := d.opt.pasta2025Root
	return []string{filepath.Join(r, pasta2025Loader),
		"--library-path", filepath.Join(r, "usr/lib/x86_64-linux-gnu") + ":" + filepath.Join(r, "lib/x86_64-linux-gnu"),
		"--argv0", "pasta", filepath.Join(r, pasta2025Bin())}
}

// pasta2025Bin is the passt build pasta-2025 runs: passt.avx2 on a CPU with AVX2.
func pasta2025Bin() string {
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil && bytes.Contains(b, []byte(" avx2")) {
		return "usr/bin/passt.avx2"
	}
	return "usr/bin/passt"
}

// pasta2025Loader is trixie's dynamic loader, by its real path in the root: following
// lib64/ld-linux-x86-64.so.2 from outside the root could leave it if a link were absolute.
const pasta2025Loader = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

// pasta2025Missing says why pasta-2025 cannot run, or "".
func (d *driver) pasta2025Missing() string {
	r := d.opt.pasta2025Root
	for _, f := range []string{pasta2025Loader, pasta2025Bin(), "usernet-versions.txt"} {
		if _, err := os.Stat(filepath.Join(r, f)); err != nil {
			return fmt.Sprintf("no Debian trixie root with passt at %s (integration/trixie.sh builds it): %v", r, err)
		}
	}
	return ""
}

// pkgVersion is a package's version from a root's usernet-versions.txt ("NAME VERSION" lines).
func pkgVersion(root, name string) string {
	for _, l := range strings.Split(readFile(filepath.Join(root, "usernet-versions.txt")), "\n") {
		if n, v, ok := strings.Cut(l, " "); ok && n == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// pastaName is "pasta YEAR" for a passt package version such as 0.0~git20230309.7c7625d-1
// (passt has no release numbers: its versions are snapshot dates).
func pastaName(pkg string) string {
	if _, after, ok := strings.Cut(pkg, "~git"); ok && len(after) >= 4 {
		if _, err := strconv.Atoi(after[:4]); err == nil {
			return "pasta " + after[:4]
		}
	}
	return "pasta"
}

// backendNotes records, in the report, how the pasta-like backends were run.
func (d *driver) backendNotes() {
	for _, b := range d.active {
		switch b {
		case usernetPasta:
			d.note("usernet-pasta is the usernet binary called as pasta (through a symlink named pasta), with exactly the arguments the pasta backends get.")
		case pasta2025:
			d.note("pasta-2025 is Debian trixie's %s (--argv0 pasta) from %s, run on this host with trixie's own loader and libc, without entering the root; it logs \"Can't run AVX2 build\" at start (its own re-exec through /proc/self/exe names the loader; the build is chosen by the harness instead).", filepath.Base(pasta2025Bin()), d.opt.pasta2025Root)
		}
	}
}

// ---- results bookkeeping

const (
	nsCmd = "NS" // stands for Meta.NSEnter in commands
)

func (d *driver) initResults(start time.Time) {
	o := d.opt
	dur := fmt.Sprint(int(o.dur.Seconds()))
	m := Meta{
		Date:       start.UTC().Format(time.RFC3339),
		Quick:      o.quick,
		Runs:       o.runs,
		DurationS:  o.dur.Seconds(),
		Conns:      o.conns,
		Clients:    o.clients,
		UDPFlows:   o.udpFlows,
		Fleet:      o.fleet,
		CloseWaitS: o.closeWait.Seconds(),
		Nproc:      runtime.NumCPU(),
		Kernel:     strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		CPU:        cpuModel(),
		MemTotal:   procField("/proc/meminfo", "MemTotal"),
		LoadStart:  loadavg(),
		GoVersion:  runtime.Version(),
		Iperf3:     firstLine(cmdOutput("iperf3", "--version")),
		Command:    o.command,
		NSEnter:    "nsenter -U -n --preserve-credentials -t <pid of the namespace's holder> --",
		Environment: "private network namespace (unshare --net --pid; lo, plus a veth pair with a default route that leads nowhere, which pasta needs), " +
			fmt.Sprintf("everything as uid %d; each backend instance in its own unshare --user --map-root-user --net --mount", os.Getuid()),
		Order: "each run goes through every workload, and within a workload through every backend, in an order rotated per run; backends stay up between runs (one instance per backend and MTU)",
	}
	d.res = &Results{Meta: m}
	for _, b := range o.backends {
		d.res.Backends = append(d.res.Backends, BackendInfo{Name: b, Version: d.version(b), Argv: map[string]string{}})
	}
	iperf := func(extra string) string {
		return nsCmd + " iperf3 -c 10.0.2.2 -p PORT -t " + dur + " -J --connect-timeout 5000" + extra
	}
	defs := []Metric{
		{ID: "tcp_n2h_65520", Group: "TCP bulk", Label: "TCP ns→host, MTU 65520", Unit: "Gbit/s", Better: "higher", Command: iperf("")},
		{ID: "tcp_n2h_1500", Group: "TCP bulk", Label: "TCP ns→host, MTU 1500", Unit: "Gbit/s", Better: "higher", Command: iperf("")},
		{ID: "tcp_h2n_65520", Group: "TCP bulk", Label: "TCP host→ns (-R, through the gateway), MTU 65520", Unit: "Gbit/s", Better: "higher", Command: iperf(" -R")},
		{ID: "tcp_h2n_1500", Group: "TCP bulk", Label: "TCP host→ns (-R, through the gateway), MTU 1500", Unit: "Gbit/s", Better: "higher", Command: iperf(" -R")},
		{ID: "tcp_fwd_65520", Group: "TCP bulk", Label: "TCP host→ns through a port forward, MTU 65520", Unit: "Gbit/s", Better: "higher",
			Command: "iperf3 -c 127.0.0.1 -p FWD -t " + dur + " -J (forward 127.0.0.1:FWD → namespace port 5201, where `" + nsCmd + " iperf3 -s -p 5201` listens)"},
		{ID: "tcp_fwdr_65520", Group: "TCP bulk", Label: "TCP ns→host through a port forward (-R), MTU 65520", Unit: "Gbit/s", Better: "higher",
			Command: "iperf3 -c 127.0.0.1 -p FWD -t " + dur + " -J -R (the same forward)"},
		{ID: "udp_1g_rate", Group: "UDP", Label: "UDP ns→host, offered 1 Gbit/s: delivered", Unit: "Gbit/s", Better: "higher", Command: iperf(" -u -b 1G -l 1400")},
		{ID: "udp_1g_loss", Group: "UDP", Label: "UDP ns→host, offered 1 Gbit/s: loss", Unit: "%", Better: "lower", Command: iperf(" -u -b 1G -l 1400")},
		{ID: "udp_max_rate", Group: "UDP", Label: "UDP ns→host, unlimited: delivered", Unit: "Gbit/s", Better: "higher", Command: iperf(" -u -b 0 -l 1400")},
		{ID: "udp_max_loss", Group: "UDP", Label: "UDP ns→host, unlimited: loss", Unit: "%", Better: "lower", Command: iperf(" -u -b 0 -l 1400")},
		{ID: "udp_flows_qps", Group: "UDP", Label: fmt.Sprintf("%d UDP flows at once ns→host, 64-byte query and echo: answered", o.udpFlows), Unit: "queries/s", Better: "higher",
			Command: fmt.Sprintf("%s usernet-bench udpflows -n %d -size 64 -timeout 500ms -addr 10.0.2.2:UPORT -d %ss (UDP echo server on the host's 127.0.0.1:UPORT)", nsCmd, o.udpFlows, dur)},
		{ID: "udp_flows_loss", Group: "UDP", Label: fmt.Sprintf("%d UDP flows: queries unanswered within 500 ms", o.udpFlows), Unit: "%", Better: "lower", Command: "(same run)"},
		{ID: "udp_flows_cpu", Group: "UDP", Label: fmt.Sprintf("%d UDP flows: backend CPU per answered query", o.udpFlows), Unit: "CPU µs/query", Better: "lower",
			Command: "utime+stime of /proc/PID/stat around the run ÷ queries answered"},
		// rr and crr: rrMetrics, inserted here
		{ID: "cpu_n2h_65520", Group: "CPU", Label: "backend CPU, TCP ns→host MTU 65520", Unit: "CPU s/GB", Better: "lower", Command: "utime+stime of /proc/PID/stat around each tcp_n2h_65520 run ÷ bytes received"},
		{ID: "cpu_h2n_65520", Group: "CPU", Label: "backend CPU, TCP host→ns MTU 65520", Unit: "CPU s/GB", Better: "lower", Command: "same, around tcp_h2n_65520"},
		{ID: "cpu_n2h_1500", Group: "CPU", Label: "backend CPU, TCP ns→host MTU 1500", Unit: "CPU s/GB", Better: "lower", Command: "same, around tcp_n2h_1500"},
		{ID: "cpu_h2n_1500", Group: "CPU", Label: "backend CPU, TCP host→ns MTU 1500", Unit: "CPU s/GB", Better: "lower", Command: "same, around tcp_h2n_1500"},
		{ID: "cpu_fwd_65520", Group: "CPU", Label: "backend CPU, TCP host→ns port forward", Unit: "CPU s/GB", Better: "lower", Command: "same, around tcp_fwd_65520"},
		{ID: "cpu_fwdr_65520", Group: "CPU", Label: "backend CPU, TCP ns→host port forward (-R)", Unit: "CPU s/GB", Better: "lower", Command: "same, around tcp_fwdr_65520"},
		{ID: "mem_idle", Group: "Memory", Label: "backend RSS idle (fresh instance, after the gateway check)", Unit: "MiB", Better: "lower", Command: "VmRSS of /proc/PID/status, 1 s after the gateway check"},
		{ID: "mem_conns", Group: "Memory", Label: fmt.Sprintf("backend RSS with %d idle TCP connections ns→host", o.conns), Unit: "MiB", Better: "lower",
			Command: fmt.Sprintf("%s usernet-bench hold -n %d -addr 10.0.2.2:PORT (each connection greeted by the host server), VmRSS 1 s after all are up; last fresh instance only", nsCmd, o.conns)},
		{ID: "mem_closed", Group: "Memory", Label: fmt.Sprintf("backend RSS %g s after those %d connections closed", o.closeWait.Seconds(), o.conns), Unit: "MiB", Better: "lower",
			Command: fmt.Sprintf("VmRSS %g s after the hold client closed its connections and exited; same instance", o.closeWait.Seconds())},
		{ID: "mem_per_conn", Group: "Memory", Label: "backend RSS per idle TCP connection", Unit: "KiB", Better: "lower",
			Command: fmt.Sprintf("(RSS with %d connections − RSS idle of the same instance) ÷ %d", o.conns, o.conns)},
		{ID: "mem_fleet_total", Group: "Memory", Label: fmt.Sprintf("%d idle instances at once: total PSS", o.fleet), Unit: "MiB", Better: "lower",
			Command: fmt.Sprintf("%d fresh instances of the backend started one after another, each passing the gateway check; 1 s later, the sum of Pss in /proc/PID/smaps_rollup of every backend process (once per run of the harness)", o.fleet)},
		{ID: "mem_fleet_per", Group: "Memory", Label: fmt.Sprintf("%d idle instances at once: PSS per instance", o.fleet), Unit: "MiB", Better: "lower",
			Command: fmt.Sprintf("(same) ÷ %d", o.fleet)},
		{ID: "mem_peak", Group: "Memory", Label: "backend peak RSS (VmHWM) after all bulk workloads (MTU 65520 instance)", Unit: "MiB", Better: "lower", Command: "VmHWM of /proc/PID/status at the end"},
		{ID: "start_poll", Group: "Startup", Label: "launch → tap0 has 10.0.2.100/24 and default via 10.0.2.2", Unit: "ms", Better: "lower", Command: nsCmd + " usernet-bench waitnet (started before the backend, polls every 1 ms)"},
		{ID: "start_readyfd", Group: "Startup", Label: "launch → ready fd (-r) written", Unit: "ms", Better: "lower", Command: "pipe passed as fd 3"},
	}
	at := slices.IndexFunc(defs, func(m Metric) bool { return m.ID == "cpu_n2h_65520" })
	defs = slices.Insert(defs, at, rrMetrics(o.clients, dur)...)
	for i := range defs {
		m := &defs[i]
		m.Results = map[string]*Series{}
		for _, b := range o.backends {
			m.Results[b] = &Series{}
		}
		d.res.Metrics = append(d.res.Metrics, m)
		d.byID[m.ID] = m
	}
}

func (d *driver) add(id, backend string, v float64) {
	d.byID[id].Results[backend].Samples = append(d.byID[id].Results[backend].Samples, v)
}

func (d *driver) fail(id, backend string, err error) {
	s := d.byID[id].Results[backend]
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	s.Errors = append(s.Errors, msg)
	d.logf("   %s %s: FAILED: %s", backend, id, msg)
}

// na records why a backend could not do a workload at all.
func (d *driver) na(id, backend, why string) {
	d.byID[id].Results[backend].NA = why
}

// naExpected records a workload the backend is known not to support (no failure).
func (d *driver) naExpected(id, backend, why string) {
	d.byID[id].Results[backend].NA = why
	d.byID[id].Results[backend].Expected = true
}

func (d *driver) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	for _, old := range d.res.Notes {
		if old == n {
			return
		}
	}
	d.res.Notes = append(d.res.Notes, n)
	d.logf("   note: %s", n)
}

func (d *driver) version(b string) string {
	switch b {
	case "usernet", usernetNoOffload, usernetGVisor:
		v := firstLine(cmdOutput(d.opt.usernet, "--version"))
		if d.opt.usernetVersion != "" {
			v += " (" + d.opt.usernetVersion + ")"
		}
		if env := usernetEnv(b); env != "" {
			v += ", " + env
		}
		return v
	case "slirp4netns":
		out := cmdOutput(d.opt.slirp, "--version")
		var parts []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "slirp4netns version") || strings.HasPrefix(l, "libslirp:") {
				parts = append(parts, strings.TrimSpace(l))
			}
		}
		return strings.Join(parts, ", ")
	case usernetPasta:
		v := firstLine(cmdOutput(d.opt.usernetPasta, "--version"))
		if d.opt.usernetVersion != "" {
			v += " (" + d.opt.usernetVersion + ")"
		}
		return v
	case "pasta":
		// Debian 12's pasta prints "pasta unknown version": the package names it.
		v := firstLine(cmdOutput(d.opt.pasta, "--version"))
		if pkg := strings.TrimSpace(cmdOutput("dpkg-query", "-W", "-f", "${Version}", "passt")); pkg != "" {
			v = fmt.Sprintf("%s (%s: this host's Debian package passt)", pastaName(pkg), pkg)
		}
		return v
	case pasta2025:
		// This build prints nothing for --version on a pipe: the root's package list names it.
		if why := d.pasta2025Missing(); why != "" {
			return "n/a: " + why
		}
		r := d.opt.pasta2025Root
		pkg := pkgVersion(r, "passt")
		return fmt.Sprintf("%s (%s: Debian trixie's package passt, from %s, with trixie's libc6 %s)", pastaName(pkg), pkg, r, pkgVersion(r, "libc6"))
	}
	return ""
}

// ---- processes

// proc is a long-running child. Every one is killed when drive returns (and, as a second
// line, by Pdeathsig; run.sh runs drive as PID 1 of a PID namespace as the third).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

func (d *driver) spawn(name string, cmd *exec.Cmd) (*proc, error) {
	d.mu.Lock()
	d.seq++
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: filepath.Join(d.logs, fmt.Sprintf("%03d-%s.log", d.seq, name))}
	d.mu.Unlock()
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	if cmd.Stderr == nil {
		cmd.Stderr = f
	}
	fmt.Fprintf(f, "# %s\n", strings.Join(cmd.Args, " "))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) stop(grace time.Duration) {
	if p == nil || !p.alive() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// logTail is the end of the process's log, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && !strings.Contains(l, "to syslog") {
			keep = append(keep, l)
		}
	}
	if len(keep) > 3 {
		keep = keep[len(keep)-3:]
	}
	return strings.Join(keep, " | ")
}

func (d *driver) killAll() {
	d.mu.Lock()
	procs := d.procs
	d.mu.Unlock()
	for _, p := range procs {
		if p.alive() {
			p.cmd.Process.Kill()
		}
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
}

// run runs a short command with a deadline and returns its stdout.
func (d *driver) run(timeout time.Duration, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(d.ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		if len(msg) > 200 {
			msg = "…" + msg[len(msg)-200:]
		}
		return out.Bytes(), fmt.Errorf("%s: %w: %s", filepath.Base(argv[0])+" "+strings.Join(argv[1:min(len(argv), 4)], " "), err, msg)
	}
	return out.Bytes(), nil
}

// lines delivers a pipe's lines until EOF.
func lines(r io.ReadCloser) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		defer r.Close()
		s := bufio.NewScanner(r)
		for s.Scan() {
			ch <- s.Text()
		}
	}()
	return ch
}

func waitLine(ch <-chan string, prefix string, timeout time.Duration) (string, time.Time, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return "", time.Time{}, fmt.Errorf("exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l, time.Now(), nil
			}
		case <-t.C:
			return "", time.Time{}, fmt.Errorf("no %q after %v", prefix, timeout)
		}
	}
}

// ---- small helpers

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

func firstLine(s string) string { l, _, _ := strings.Cut(strings.TrimSpace(s), "\n"); return l }

func cmdOutput(argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.Contains(l, "to syslog") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func cpuModel() string {
	for _, l := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadavg() string { return strings.Join(strings.Fields(readFile("/proc/loadavg"))[:3], " ") }

// procField returns the value of "Key:" in a /proc file like status or meminfo.
func procField(path, key string) string {
	for _, l := range strings.Split(readFile(path), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// vmMiB reads a "VmXXX: N kB" field of /proc/PID/status in MiB.
func vmMiB(pid int, key string) (float64, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	kb, err := kBField(readFile(path), key)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return kb / 1024, nil
}

// pssMiB is the process's proportional set size (pages shared with other processes count
// in part), from /proc/PID/smaps_rollup, in MiB.
func pssMiB(pid int) (float64, error) {
	path := fmt.Sprintf("/proc/%d/smaps_rollup", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	kb, err := kBField(string(b), "Pss")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return kb / 1024, nil
}

// cpuSeconds is utime+stime of the whole process (all its threads, live and exited).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64) // field 14
	st, err2 := strconv.ParseFloat(f[12], 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return port(ln), nil
}

// listening reports whether a TCP socket listens on port, reading /proc/net/tcp{,6} text.
func listening(procNetTCP string, port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, l := range strings.Split(procNetTCP, "\n") {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true
		}
	}
	return false
}

// rotate returns s rotated left by i, so every backend takes every position across runs.
func rotate(s []string, i int) []string {
	if len(s) == 0 {
		return s
	}
	i %= len(s)
	return append(append([]string{}, s[i:]...), s[:i]...)
}

// usernetNoOffload is a backend for A/B runs: usernet with its tap opened
// without IFF_VNET_HDR and offloads (noOffloadEnv, read only by the
// usernet_debug build), e.g.
// `--backends usernet,usernet-nooffload`.
const (
	usernetNoOffload = "usernet-nooffload"
	noOffloadEnv     = "USERNET_DEBUG_NO_OFFLOAD=1"
)

// usernetGVisor is usernet with its direct TCP path off (USERNET_DIRECT_TCP=0:
// the guest's outbound TCP through gVisor and the relay, as before the direct
// path became the default), the same binary as usernet's.
const (
	usernetGVisor = "usernet-gvisor"
	gvisorEnv     = "USERNET_DIRECT_TCP=0"
)

// usernetEnv is the variable a usernet variant's backend adds to the environment.
func usernetEnv(b string) string {
	switch b {
	case usernetNoOffload:
		return noOffloadEnv
	case usernetGVisor:
		return gvisorEnv
	}
	return ""
}

// isUsernet reports whether backend b runs the usernet binary with slirp4netns's command line.
func isUsernet(b string) bool { return b == "usernet" || b == usernetNoOffload || b == usernetGVisor }

// The backends that take pasta's command line: usernet called as pasta, and pasta 2025
// from a Debian trixie root beside this host's pasta.
const (
	usernetPasta = "usernet-pasta"
	pasta2025    = "pasta-2025"
)

// pastaCLI reports whether backend b takes pasta's command line (the same arguments for all).
func pastaCLI(b string) bool { return b == "pasta" || b == pasta2025 || b == usernetPasta }
