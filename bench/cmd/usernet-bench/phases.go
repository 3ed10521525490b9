package main

// The two phases of a run and their workloads.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// startupPhase starts opt.runs fresh instances of every backend (interleaved) and measures
// startup and idle RSS on each; on the last one it also opens opt.conns idle connections.
func (d *driver) startupPhase() {
	for i := 0; i < d.opt.runs && d.ctx.Err() == nil; i++ {
		for _, b := range rotate(d.active, i) {
			in := d.newInstance(b, 65520, false)
			d.startupOnce(in, i == d.opt.runs-1)
			in.stop()
		}
	}
}

func (d *driver) startupOnce(in *instance, last bool) {
	b := in.backend
	memIDs := []string{"mem_idle"}
	if last {
		memIDs = append(memIDs, connMemIDs...)
	}
	failAll := func(err error, ids ...string) {
		for _, id := range ids {
			d.fail(id, b, err)
		}
	}
	if err := in.start(); err != nil {
		failAll(err, append([]string{"start_poll", "start_readyfd"}, memIDs...)...)
		return
	}
	d.res.Backends[d.backendIndex(b)].Argv["startup, MTU 65520"] = strings.Join(in.argv, " ")
	d.add("start_poll", b, ms(in.polled))
	if in.hasReadyFD() {
		d.add("start_readyfd", b, ms(in.readyFD))
	} else {
		d.naExpected("start_readyfd", b, "pasta's command line has no ready fd")
	}
	d.logf("   %-13s startup: tap ready %.1f ms, ready fd %s", b, ms(in.polled), map[bool]string{true: fmt.Sprintf("%.1f ms", ms(in.readyFD)), false: "n/a"}[in.hasReadyFD()])
	if err := in.checkGateway(); err != nil {
		failAll(err, memIDs...)
		return
	}
	time.Sleep(time.Second)
	idle, err := vmMiB(in.pid(), "VmRSS")
	if err != nil {
		d.fail("mem_idle", b, err)
	} else {
		d.add("mem_idle", b, idle)
	}
	if !last {
		return
	}
	with, after, err := d.holdConns(in)
	if err != nil {
		failAll(err, connMemIDs...)
		return
	}
	d.add("mem_conns", b, with)
	d.add("mem_closed", b, after)
	if idle > 0 {
		d.add("mem_per_conn", b, (with-idle)*1024/float64(d.opt.conns))
	}
	d.logf("   %-13s RSS idle %.1f MiB, with %d connections %.1f MiB, %g s after they closed %.1f MiB", b, idle, d.opt.conns, with, d.opt.closeWait.Seconds(), after)
}

// connMemIDs are the metrics holdConns gives, on the last fresh instance of a backend.
var connMemIDs = []string{"mem_conns", "mem_closed", "mem_per_conn"}

// holdConns opens opt.conns connections from the namespace to the host and returns the
// backend's RSS while they are open and opt.closeWait after they have all closed.
func (d *driver) holdConns(in *instance) (with, after float64, err error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, 0, err
	}
	cmd := in.inNS(d.self, "hold", "-n", strconv.Itoa(d.opt.conns), "-addr", fmt.Sprintf("10.0.2.2:%d", port(d.srv.holdLn)))
	cmd.Stdout = pw
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, 0, err
	}
	p, err := d.spawn(in.label+"-hold", cmd)
	pw.Close()
	if err != nil {
		return 0, 0, err
	}
	closed := false
	closeAll := func() error {
		closed = true
		stdin.Close() // the client closes its connections and exits
		select {
		case <-p.done:
			return nil
		case <-time.After(10 * time.Second):
			p.stop(time.Second)
			return errors.New("hold client did not exit 10 s after its stdin closed")
		}
	}
	defer func() {
		if !closed {
			closeAll()
		}
	}()
	if _, _, err := waitLine(lines(pr), "ready", 120*time.Second); err != nil {
		return 0, 0, fmt.Errorf("hold %d connections: %w: %s", d.opt.conns, err, p.logTail())
	}
	time.Sleep(time.Second)
	if !in.be.alive() {
		return 0, 0, fmt.Errorf("%s exited with %d connections open: %s", in.backend, d.opt.conns, in.be.logTail())
	}
	if with, err = vmMiB(in.pid(), "VmRSS"); err != nil {
		return 0, 0, err
	}
	if err := closeAll(); err != nil {
		return 0, 0, err
	}
	time.Sleep(d.opt.closeWait)
	if !in.be.alive() {
		return 0, 0, fmt.Errorf("%s exited after %d connections closed: %s", in.backend, d.opt.conns, in.be.logTail())
	}
	after, err = vmMiB(in.pid(), "VmRSS")
	return with, after, err
}

// fleetPhase starts opt.fleet idle instances of each backend at once (a host runs one per
// container) and measures their total PSS: pages the instances share (the binary, the
// libraries) count once over all of them, as they cost the host once.
func (d *driver) fleetPhase() {
	for _, b := range d.active {
		if d.ctx.Err() != nil {
			return
		}
		total, err := d.fleetOnce(b)
		if err != nil {
			d.fail("mem_fleet_total", b, err)
			d.fail("mem_fleet_per", b, err)
			continue
		}
		d.add("mem_fleet_total", b, total)
		d.add("mem_fleet_per", b, total/float64(d.opt.fleet))
		d.logf("   %-13s %d instances: PSS %.1f MiB in all, %.2f MiB each", b, d.opt.fleet, total, total/float64(d.opt.fleet))
	}
}

func (d *driver) fleetOnce(b string) (float64, error) {
	var ins []*instance
	defer func() {
		// In parallel: a backend that is slow to exit on SIGTERM would hold up the run
		// once per instance otherwise.
		var wg sync.WaitGroup
		for _, in := range ins {
			wg.Go(in.stop)
		}
		wg.Wait()
	}()
	for i := range d.opt.fleet {
		if d.ctx.Err() != nil {
			return 0, d.ctx.Err()
		}
		in := d.newInstance(b, 65520, false)
		in.label = fmt.Sprintf("%s-fleet%02d", b, i+1)
		ins = append(ins, in)
		if err := in.start(); err != nil {
			return 0, fmt.Errorf("instance %d of %d: %w", i+1, d.opt.fleet, err)
		}
		if err := in.checkGateway(); err != nil {
			return 0, fmt.Errorf("instance %d of %d: %w", i+1, d.opt.fleet, err)
		}
	}
	time.Sleep(time.Second)
	total, estimate := 0.0, 0.0
	estimated := false
	for i, in := range ins {
		if !in.be.alive() {
			return 0, fmt.Errorf("instance %d of %d exited: %s", i+1, d.opt.fleet, in.be.logTail())
		}
		status := readFile(fmt.Sprintf("/proc/%d/status", in.pid()))
		e, eerr := pssEstimateMiB(status, len(ins))
		if eerr == nil {
			estimate += e
		}
		v, err := pssMiB(in.pid())
		if errors.Is(err, fs.ErrPermission) && eerr == nil {
			// pasta makes itself non-dumpable: only root may read its smaps_rollup.
			v, estimated = e, true
		} else if err != nil {
			return 0, fmt.Errorf("instance %d of %d: %w", i+1, d.opt.fleet, err)
		}
		total += v
	}
	if estimated {
		d.note("%s: /proc/PID/smaps_rollup is not readable (the process made itself non-dumpable), so its PSS is estimated from /proc/PID/status as RssAnon + RssShmem + RssFile ÷ %d (file pages shared by the %d instances alike).", b, len(ins), len(ins))
	} else {
		d.logf("   %-13s (the estimate used where smaps_rollup is unreadable would say %.1f MiB)", b, estimate)
	}
	return total, nil
}

func (d *driver) backendIndex(b string) int {
	for i, bi := range d.res.Backends {
		if bi.Name == b {
			return i
		}
	}
	panic("unknown backend " + b)
}

// workload is one timed measurement on an instance; it records its own metrics.
type workload struct {
	name string
	mtu  int
	ids  []string // metrics it records, marked n/a when the instance is dead
	run  func(in *instance) error
}

func (d *driver) throughputPhase() {
	// One instance per backend and MTU, kept up for every run.
	insts := map[string]map[int]*instance{}
	for _, b := range d.active {
		insts[b] = map[int]*instance{}
		for _, mtu := range []int{65520, 1500} {
			in := d.newInstance(b, mtu, mtu == 65520)
			insts[b][mtu] = in
			err := in.start()
			if err == nil {
				d.res.Backends[d.backendIndex(b)].Argv[fmt.Sprintf("MTU %d", mtu)] = strings.Join(in.argv, " ")
				err = in.checkGateway()
			}
			if err == nil {
				err = in.startIperf()
			}
			if err != nil {
				in.dead = err.Error()
				d.logf("   %s: %v", in.label, err)
				continue
			}
			if in.fwd {
				if isUsernet(in.backend) && !d.usernetAPI {
					for _, id := range d.fwdMetrics() {
						d.naExpected(id, b, "this usernet has no --api-socket (port forwards come with the API)")
					}
				} else if err := in.startForward(); err != nil {
					for _, id := range d.fwdMetrics() {
						d.na(id, b, err.Error())
					}
					in.fwdPort = 0
				}
			}
		}
	}
	defer func() {
		for _, b := range d.active {
			for _, in := range insts[b] {
				in.stop()
			}
		}
	}()

	dur := strconv.Itoa(int(d.opt.dur.Seconds()))
	tcp := func(id, cpuID string, mtu int, extra ...string) workload {
		return workload{name: id, mtu: mtu, ids: []string{id, cpuID}, run: func(in *instance) error {
			return d.iperfTCP(in, id, cpuID, false, append([]string{"-c", "10.0.2.2", "-p", strconv.Itoa(in.iperfPort), "-t", dur}, extra...))
		}}
	}
	udp := func(prefix, rate string) workload {
		return workload{name: prefix, mtu: 65520, ids: []string{prefix + "_rate", prefix + "_loss"}, run: func(in *instance) error {
			return d.iperfUDP(in, prefix, []string{"-c", "10.0.2.2", "-p", strconv.Itoa(in.iperfPort), "-t", dur, "-u", "-b", rate, "-l", "1400"})
		}}
	}
	rr := func(mode string, fwd bool, clients int) workload {
		name := rrName(mode, fwd, clients)
		return workload{name: name, mtu: 65520, ids: []string{name + "_tps", name + "_p50", name + "_p99"}, run: func(in *instance) error {
			if fwd && in.fwdPort == 0 {
				return errSkip
			}
			return d.rr(in, mode, name, fwd, clients)
		}}
	}
	fwdTCP := func(id, cpuID string, extra ...string) workload {
		return workload{name: id, mtu: 65520, ids: []string{id, cpuID}, run: func(in *instance) error {
			if in.fwdPort == 0 {
				return errSkip
			}
			return d.iperfTCP(in, id, cpuID, true, append([]string{"-c", "127.0.0.1", "-p", strconv.Itoa(in.fwdPort), "-t", dur}, extra...))
		}}
	}
	wls := []workload{
		tcp("tcp_n2h_65520", "cpu_n2h_65520", 65520),
		tcp("tcp_h2n_65520", "cpu_h2n_65520", 65520, "-R"),
		tcp("tcp_n2h_1500", "cpu_n2h_1500", 1500),
		tcp("tcp_h2n_1500", "cpu_h2n_1500", 1500, "-R"),
		fwdTCP("tcp_fwd_65520", "cpu_fwd_65520"),
		fwdTCP("tcp_fwdr_65520", "cpu_fwdr_65520", "-R"),
		udp("udp_1g", "1G"),
		udp("udp_max", "0"),
		{name: "udp_flows", mtu: 65520, ids: []string{"udp_flows_qps", "udp_flows_loss", "udp_flows_cpu"}, run: d.udpFlows},
	}
	for _, c := range d.opt.clients {
		wls = append(wls, rr("rr", false, c), rr("crr", false, c), rr("rr", true, c), rr("crr", true, c))
	}
	loopback := d.opt.workloadRE == nil || d.opt.workloadRE.MatchString("loopback")
	for _, w := range wls {
		if d.opt.workloadRE != nil && !d.opt.workloadRE.MatchString(w.name) {
			for _, id := range w.ids {
				for _, b := range d.active {
					d.naExpected(id, b, "not selected by --workloads")
				}
			}
		}
		if strings.HasPrefix(w.name, "tcp_") && d.opt.workloadRE != nil && d.opt.workloadRE.MatchString(w.name) {
			loopback = true // the bulk figures are compared with it
		}
	}
	var lo *loopbackServer
	if loopback {
		var err error
		if lo, err = d.startLoopback(); err != nil {
			d.logf("   host loopback: %v", err)
			d.res.Loopback = &Series{NA: err.Error()}
		}
		defer lo.stop()
	}
	for i := 0; i < d.opt.runs && d.ctx.Err() == nil; i++ {
		d.logf("-- run %d/%d", i+1, d.opt.runs)
		if lo != nil {
			lo.run(d)
		}
		for _, w := range wls {
			if d.opt.workloadRE != nil && !d.opt.workloadRE.MatchString(w.name) {
				continue
			}
			for _, b := range rotate(d.active, i) {
				if d.ctx.Err() != nil {
					return
				}
				in := insts[b][w.mtu]
				in.check()
				if in.dead != "" {
					for _, id := range w.ids {
						d.na(id, b, in.dead)
					}
					continue
				}
				if err := w.run(in); err != nil && !errors.Is(err, errSkip) {
					for _, id := range w.ids {
						d.fail(id, b, err)
					}
				}
				in.check()
			}
		}
	}
	for _, b := range d.active {
		in := insts[b][65520]
		if in.dead != "" {
			d.na("mem_peak", b, in.dead)
			continue
		}
		if v, err := vmMiB(in.pid(), "VmHWM"); err != nil {
			d.fail("mem_peak", b, err)
		} else {
			d.add("mem_peak", b, v)
		}
	}
}

var errSkip = errors.New("skipped")

// fwdMetrics are the metrics measured through the port forwards.
func (d *driver) fwdMetrics() []string {
	var ids []string
	for _, m := range d.res.Metrics {
		if strings.Contains(m.ID, "_fwd") {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

type iperfJSON struct {
	Error string `json:"error"`
	End   struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		Sum         iperfSum `json:"sum"` // UDP: the server's packet counts
	} `json:"end"`
}

type iperfSum struct {
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Packets       float64 `json:"packets"`
	LostPackets   float64 `json:"lost_packets"`
	LostPercent   float64 `json:"lost_percent"`
}

// iperf runs an iperf3 client (inside the namespace unless fromHost) and returns its JSON
// and the backend's CPU seconds over the run. On failure it restarts the server(s).
func (d *driver) iperf(in *instance, fromHost bool, args []string) (*iperfJSON, float64, error) {
	argv := append([]string{"iperf3"}, args...)
	argv = append(argv, "-J", "--connect-timeout", "5000")
	if !fromHost {
		argv = in.ns(argv...)
	}
	cpu0, err := cpuSeconds(in.pid())
	if err != nil {
		return nil, 0, err
	}
	out, runErr := d.run(d.opt.dur+40*time.Second, argv...)
	cpu1, err := cpuSeconds(in.pid())
	if err != nil {
		return nil, 0, err
	}
	var j iperfJSON
	jsonErr := json.Unmarshal(out, &j)
	if runErr == nil && jsonErr == nil && j.Error == "" {
		return &j, cpu1 - cpu0, nil
	}
	err = runErr
	if j.Error != "" {
		err = fmt.Errorf("iperf3: %s", j.Error)
	} else if err == nil {
		err = fmt.Errorf("iperf3 output: %w", jsonErr)
	}
	// A failed client can leave iperf3 -s busy: start afresh for the next run.
	if rerr := in.startIperf(); rerr != nil {
		in.dead = rerr.Error()
	}
	if fromHost {
		if rerr := in.startForward(); rerr != nil {
			in.fwdPort = 0
		}
	}
	return nil, 0, err
}

func (d *driver) iperfTCP(in *instance, id, cpuID string, fromHost bool, args []string) error {
	j, cpu, err := d.iperf(in, fromHost, args)
	if err != nil {
		return err
	}
	r := j.End.SumReceived
	if r.Bytes == 0 {
		return errors.New("iperf3: nothing received")
	}
	d.add(id, in.backend, r.BitsPerSecond/1e9)
	d.add(cpuID, in.backend, cpu/(r.Bytes/1e9))
	d.logf("   %-13s %-14s %6.2f Gbit/s  %.2f CPU s/GB", in.backend, id, r.BitsPerSecond/1e9, cpu/(r.Bytes/1e9))
	return nil
}

func (d *driver) iperfUDP(in *instance, prefix string, args []string) error {
	j, _, err := d.iperf(in, false, args)
	if err != nil {
		return err
	}
	s := j.End.Sum
	if s.Packets == 0 {
		return errors.New("iperf3: no UDP packets")
	}
	// Delivered = offered × the fraction of datagrams the server counted (iperf3 3.12's
	// sum_received for UDP repeats the sender's byte count).
	rate := j.End.SumSent.BitsPerSecond * (s.Packets - s.LostPackets) / s.Packets / 1e9
	d.add(prefix+"_rate", in.backend, rate)
	d.add(prefix+"_loss", in.backend, s.LostPercent)
	d.logf("   %-13s %-14s %6.2f Gbit/s delivered (sent %.2f), loss %.2f%%", in.backend, prefix, rate, j.End.SumSent.BitsPerSecond/1e9, s.LostPercent)
	return nil
}

// rr runs the request/response client (clients of them at once): in the namespace against the host's echo server
// through the gateway, or (fwd) on the host against the namespace's echo server through the
// port forward. Its metrics are name_tps, name_p50 and name_p99.
func (d *driver) rr(in *instance, mode, name string, fwd bool, clients int) error {
	argv := []string{d.self, "rr", "-mode", mode, "-d", d.opt.dur.String(), "-c", strconv.Itoa(clients)}
	if fwd {
		argv = append(argv, "-addr", fmt.Sprintf("127.0.0.1:%d", in.fwdEchoPort))
	} else {
		argv = in.ns(append(argv, "-addr", fmt.Sprintf("10.0.2.2:%d", port(d.srv.echoLn)))...)
	}
	out, err := d.run(d.opt.dur+40*time.Second, argv...)
	if err != nil {
		return err
	}
	var r rrResult
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("rr output %q: %w", out, err)
	}
	d.add(name+"_tps", in.backend, r.TPS)
	d.add(name+"_p50", in.backend, r.P50us)
	d.add(name+"_p99", in.backend, r.P99us)
	if r.Errors > 0 {
		d.note("%s %s: %d failed transactions in one run (of %d)", in.backend, name, r.Errors, r.Transactions+r.Errors)
	}
	d.logf("   %-13s %-14s %8.0f /s  p50 %.0f µs  p99 %.0f µs", in.backend, name, r.TPS, r.P50us, r.P99us)
	return nil
}

func ms(t time.Duration) float64 { return float64(t.Microseconds()) / 1e3 }

// udpFlows runs the DNS storm in the namespace against the host's UDP echo server and
// records the answered rate, the loss and the backend's CPU per answered query.
func (d *driver) udpFlows(in *instance) error {
	argv := in.ns(d.self, "udpflows", "-n", strconv.Itoa(d.opt.udpFlows), "-size", "64", "-timeout", "500ms",
		"-d", d.opt.dur.String(), "-addr", fmt.Sprintf("10.0.2.2:%d", d.srv.udpEcho.LocalAddr().(*net.UDPAddr).Port))
	cpu0, err := cpuSeconds(in.pid())
	if err != nil {
		return err
	}
	out, err := d.run(d.opt.dur+40*time.Second, argv...)
	if err != nil {
		return err
	}
	cpu1, err := cpuSeconds(in.pid())
	if err != nil {
		return err
	}
	var r udpResult
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("udpflows output %q: %w", out, err)
	}
	d.add("udp_flows_qps", in.backend, r.QPS)
	d.add("udp_flows_loss", in.backend, r.LossPct)
	d.add("udp_flows_cpu", in.backend, (cpu1-cpu0)*1e6/float64(r.Answered))
	d.logf("   %-13s %-14s %8.0f queries/s  loss %.2f%%  %.1f CPU µs/query  p50 %.0f µs  p99 %.0f µs", in.backend, "udp_flows", r.QPS, r.LossPct, (cpu1-cpu0)*1e6/float64(r.Answered), r.P50us, r.P99us)
	return nil
}

// loopbackServer is iperf3 -s on the host's 127.0.0.1 for the host loopback line: TCP with
// no backend in the way, once per run, beside the bulk workloads.
type loopbackServer struct {
	port int
	p    *proc
}

func (d *driver) startLoopback() (*loopbackServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := d.spawn("loopback-iperf3s", exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if listening(readFile("/proc/net/tcp"), port) {
			d.res.Loopback = &Series{}
			return &loopbackServer{port: port, p: p}, nil
		}
		if !p.alive() {
			break
		}
	}
	p.stop(time.Second)
	return nil, fmt.Errorf("host iperf3 -s -p %d not listening: %s", port, p.logTail())
}

func (lo *loopbackServer) run(d *driver) {
	out, err := d.run(d.opt.dur+40*time.Second, "iperf3", "-c", "127.0.0.1", "-p", strconv.Itoa(lo.port),
		"-t", strconv.Itoa(int(d.opt.dur.Seconds())), "-J", "--connect-timeout", "5000")
	var j iperfJSON
	if err == nil {
		if err = json.Unmarshal(out, &j); err == nil && j.Error != "" {
			err = fmt.Errorf("iperf3: %s", j.Error)
		}
	}
	if err == nil && j.End.SumReceived.Bytes == 0 {
		err = errors.New("iperf3: nothing received")
	}
	if err != nil {
		d.res.Loopback.Errors = append(d.res.Loopback.Errors, err.Error())
		d.logf("   host loopback: FAILED: %v", err)
		return
	}
	v := j.End.SumReceived.BitsPerSecond / 1e9
	d.res.Loopback.Samples = append(d.res.Loopback.Samples, v)
	d.logf("   %-13s %-14s %6.2f Gbit/s", "host", "loopback", v)
}

func (lo *loopbackServer) stop() {
	if lo != nil {
		lo.p.stop(time.Second)
	}
}
