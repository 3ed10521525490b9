package integration

// Stress from inside the namespace, as an attacker would: UDP from tens of
// thousands of source ports, pings with as many identifiers, frames from
// spoofed sources, all written raw on the tap. usernet's RSS, fds and host
// UDP sockets must stay within the documented limits (docs/limits.md),
// memory must come back when the flows go, and a probe connection through
// the gateway must be answered throughout. Short by default;
// USERNET_STRESS=long floods longer and waits for every flow to expire.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["flood"] = helperFlood
}

// UDPFloodResult is what the flood helper reports.
type UDPFloodResult struct {
	Sent       int     `json:"sent"`
	Prohibited int     `json:"prohibited"` // ICMP administratively prohibited received
	Probes     int     `json:"probes"`
	ProbeFails int     `json:"probe_fails"`
	ProbeMaxMS float64 `json:"probe_max_ms"`
	ProbeP50MS float64 `json:"probe_p50_ms"`
	Err        string  `json:"err,omitempty"`
}

// helperFlood writes N frames of one kind on IFACE through a packet socket,
// paced at about 10 000 a second, while a TCP probe to PROBE (an echo
// server) runs every 100 ms; it counts the ICMP administratively
// prohibited errors that come back. Kinds: "udp" (from N source ports of
// the interface's address to DST ip:port), "ping" (echo requests to DST ip
// with N identifiers), "spoof" (UDP to DST ip:port from N random sources
// outside the network). The gateway's MAC is libslirp's 52:55 + its IPv4
// address. Usage: flood KIND IFACE N GATEWAY DST PROBE.
func helperFlood(args []string) (any, error) {
	if err := argN(args, 6, "flood KIND IFACE N GATEWAY DST PROBE"); err != nil {
		return nil, err
	}
	kind := args[0]
	ifi, err := net.InterfaceByName(args[1])
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return nil, err
	}
	gw, err := netip.ParseAddr(args[3])
	if err != nil {
		return nil, err
	}
	var src netip.Addr
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			src = p.Addr()
		}
	}
	if !src.IsValid() {
		return nil, fmt.Errorf("%s has no IPv4 address", ifi.Name)
	}
	dst, err := netip.ParseAddrPort(args[4])
	if kind == "ping" {
		var a netip.Addr
		a, err = netip.ParseAddr(args[4])
		dst = netip.AddrPortFrom(a, 0)
	}
	if err != nil {
		return nil, err
	}

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	icmpFD, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer unix.Close(icmpFD)
	unix.SetsockoptTimeval(icmpFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})

	var res UDPFloodResult
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var prohibited int
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, _, err := unix.Recvfrom(icmpFD, buf, 0)
			if err != nil || m < 22 {
				continue
			}
			ihl := int(buf[0]&0xf) * 4
			if m > ihl+1 && buf[ihl] == 3 && buf[ihl+1] == 13 {
				prohibited++
			}
		}
	})
	var lat []time.Duration
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			ok := probeOnce(args[5])
			res.Probes++
			if !ok {
				res.ProbeFails++
				continue
			}
			lat = append(lat, time.Since(start))
		}
	})

	gwMAC := append([]byte{0x52, 0x55}, gw.AsSlice()...)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	copy(sa.Addr[:], gwMAC)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n; i++ {
		var pkt []byte
		switch kind {
		case "udp":
			pkt = floodUDP(netip.AddrPortFrom(src, uint16(10000+i%50000)), dst)
		case "spoof":
			s := spoofSource(r)
			pkt = floodUDP(netip.AddrPortFrom(s, uint16(1024+r.IntN(60000))), dst)
		case "ping":
			pkt = floodPing(src, dst.Addr(), uint16(i))
		default:
			return nil, fmt.Errorf("unknown kind %q", kind)
		}
		frame := append(append(append([]byte{}, gwMAC...), ifi.HardwareAddr...), 0x08, 0x00)
		frame = append(frame, pkt...)
		for {
			err := unix.Sendto(fd, frame, 0, sa)
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				res.Err = fmt.Sprintf("frame %d: %v", i, err)
			}
			break
		}
		if res.Err != "" {
			break
		}
		res.Sent++
		if i%64 == 63 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(time.Second) // probes and ICMP errors after the flood
	close(stop)
	wg.Wait()
	res.Prohibited = prohibited
	if len(lat) > 0 {
		slices.Sort(lat)
		res.ProbeMaxMS = float64(lat[len(lat)-1]) / 1e6
		res.ProbeP50MS = float64(lat[len(lat)/2]) / 1e6
	}
	return res, nil
}

// spoofSource is a random unicast address outside what the guest may send
// from (its network, link-local) and outside loopback.
func spoofSource(r *rand.Rand) netip.Addr {
	for {
		a := netip.AddrFrom4([4]byte{byte(1 + r.IntN(223)), byte(r.UintN(256)), byte(r.UintN(256)), byte(1 + r.IntN(254))})
		if !a.IsLoopback() && !a.IsLinkLocalUnicast() && !netip.MustParsePrefix("10.0.2.0/24").Contains(a) {
			return a
		}
	}
}

// probeOnce connects to addr, writes a byte and reads its echo.
func probeOnce(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{1}); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err = c.Read(b)
	return err == nil
}

func ipv4Header(src, dst netip.Addr, proto byte, payloadLen int) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+payloadLen))
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return h
}

// floodUDP is a one-byte UDP datagram (checksum 0: none).
func floodUDP(src, dst netip.AddrPort) []byte {
	u := make([]byte, 9)
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], 9)
	u[8] = 'x'
	return append(ipv4Header(src.Addr(), dst.Addr(), 17, len(u)), u...)
}

// floodPing is an ICMP echo request with identifier id.
func floodPing(src, dst netip.Addr, id uint16) []byte {
	m := make([]byte, 16)
	m[0] = 8
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], 1)
	copy(m[8:], "usernet!")
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return append(ipv4Header(src, dst, 1, len(m)), m...)
}

// procFigures are one sample of a process's resources.
type procFigures struct {
	rssKiB, fds, udpSockets int
}

func (f procFigures) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d fds, %d UDP sockets", float64(f.rssKiB)/1024, f.fds, f.udpSockets)
}

// sampleProc reads pid's RSS, its fd count, and how many of its fds are
// UDP sockets (each a port of the host).
func sampleProc(pid int) (procFigures, error) {
	var f procFigures
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return f, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f.rssKiB, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	udp := map[string]bool{}
	for _, file := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		fh, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) > 9 && fs[0] != "sl" {
				udp["socket:["+fs[9]+"]"] = true
			}
		}
		fh.Close()
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return f, err
	}
	f.fds = len(ents)
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && udp[l] {
			f.udpSockets++
		}
	}
	return f, nil
}

// udpSampler records the peaks of a process's figures until stopped.
type udpSampler struct {
	mu   sync.Mutex
	peak procFigures
	stop chan struct{}
	done chan struct{}
}

func startUDPSampler(pid int) *udpSampler {
	s := &udpSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if f, err := sampleProc(pid); err == nil {
				s.mu.Lock()
				s.peak = procFigures{max(s.peak.rssKiB, f.rssKiB), max(s.peak.fds, f.fds), max(s.peak.udpSockets, f.udpSockets)}
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *udpSampler) finish() procFigures {
	close(s.stop)
	<-s.done
	return s.peak
}

// refusals returns usernet's refusal counters by reason, from get_stats
// on its API socket.
func refusals(t *testing.T, sock string) map[string]uint64 {
	t.Helper()
	reply, err := apiExchange(sock, `{"execute":"get_stats"}`, 10*time.Second)
	if err != nil {
		t.Fatalf("get_stats: %v", err)
	}
	var r struct {
		Return struct {
			Refused map[string]uint64 `json:"refused"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil || r.Return.Refused == nil {
		t.Fatalf("get_stats: reply %q: %v", reply, err)
	}
	return r.Return.Refused
}

// nonZero drops the zero counters, for the log.
func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// The limits the stress test runs with: the defaults (docs/limits.md)
// except a short UDP timeout, so that the flows' end can be seen.
const (
	stressUDPSockets = 1024
	stressUDPFlows   = 4096
	stressPingFlows  = 256
	stressUDPTimeout = 5 * time.Second
	stressProbeBound = time.Second // generous: CI machines are noisy
	stressRSSBound   = 200 << 10   // KiB
	stressRSSKept    = 32 << 10    // KiB over the baseline once every flow has gone
)

func TestStressUDPFloods(t *testing.T) {
	setup(t)
	if !suite.isUsernet {
		t.Skip("usernet's limits")
	}
	long := os.Getenv("USERNET_STRESS") == "long"
	n := 30000
	if long {
		n = 100000
	}
	ctx := testContext(t, 10*time.Minute)
	tg := newTarget(t)
	sock := filepath.Join(userDir(t), "api.sock")
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--api-socket", sock, "--udp-timeout", fmt.Sprint(stressUDPTimeout.Seconds())}})
	pid := un.cmd.Process.Pid

	probeLn := listenTCP(t, "127.0.0.1:0")
	echoServer(t, probeLn)
	probe := "10.0.2.2:" + port(probeLn.Addr())
	sink := listenUDP(t, "127.0.0.1:0") // never answers: flows stay one-way
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(b); err != nil {
				return
			}
		}
	}()
	udpDst := "10.0.2.2:" + port(sink.LocalAddr())

	checkDial(t, tg, probe, "")
	base, err := sampleProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline: %v", base)

	flood := func(kind, dst string) (UDPFloodResult, procFigures) {
		t.Helper()
		s := startUDPSampler(pid)
		var res UDPFloodResult
		start := time.Now()
		tg.helper(t, ctx, &res, "flood", kind, "tap0", strconv.Itoa(n), "10.0.2.2", dst, probe)
		peak := s.finish()
		t.Logf("%s flood: %d frames in %v; peak %v; guest saw %d ICMP prohibited; probe: %d, %d failed, median %.1f ms, max %.1f ms; refusals so far: %v",
			kind, res.Sent, time.Since(start).Round(time.Millisecond), peak, res.Prohibited, res.Probes, res.ProbeFails, res.ProbeP50MS, res.ProbeMaxMS, nonZero(refusals(t, sock)))
		if res.Err != "" || res.Sent != n {
			t.Fatalf("%s flood: %+v", kind, res)
		}
		if un.exited() {
			t.Fatalf("usernet exited during the %s flood", kind)
		}
		if res.ProbeFails > 0 || time.Duration(res.ProbeMaxMS*1e6) > stressProbeBound {
			t.Errorf("%s flood: probe connection failed %d times, slowest %.1f ms; want none over %v", kind, res.ProbeFails, res.ProbeMaxMS, stressProbeBound)
		}
		if peak.rssKiB > stressRSSBound {
			t.Errorf("%s flood: RSS peaked at %.1f MiB, want at most %d MiB", kind, float64(peak.rssKiB)/1024, stressRSSBound>>10)
		}
		return res, peak
	}

	// UDP from n source ports: at most --udp-sockets host sockets.
	res, peak := flood("udp", udpDst)
	if peak.udpSockets > base.udpSockets+stressUDPSockets {
		t.Errorf("udp flood: %d UDP sockets at the peak, want at most %d (baseline) + %d (--udp-sockets)", peak.udpSockets, base.udpSockets, stressUDPSockets)
	}
	if peak.fds > base.fds+stressUDPSockets+64 {
		t.Errorf("udp flood: %d fds at the peak, want at most %d", peak.fds, base.fds+stressUDPSockets+64)
	}
	if got := refusals(t, sock)["udp_ports"]; res.Prohibited == 0 || got == 0 || !strings.Contains(un.stderr.String(), "(--udp-sockets); udp_ports=") {
		t.Errorf("udp flood: refusals not seen: guest %d ICMP prohibited, udp_ports %d, log:\n%s", res.Prohibited, got, un.stderr.String())
	}
	// The flows go after the UDP timeout, and their sockets and memory
	// with them.
	deadline := time.Now().Add(stressUDPTimeout + 15*time.Second)
	var after procFigures
	for {
		after, _ = sampleProc(pid)
		if after.udpSockets <= base.udpSockets || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("after the UDP flows expired: %v", after)
	if after.udpSockets > base.udpSockets {
		t.Errorf("%d UDP sockets left after the flows' timeout, baseline %d", after.udpSockets, base.udpSockets)
	}
	if after.fds > base.fds+8 {
		t.Errorf("%d fds left after the flows' timeout, baseline %d", after.fds, base.fds)
	}

	// Pings with n identifiers: at most --ping-flows ping sockets.
	_, peak = flood("ping", suite.inet4)
	if peak.fds > after.fds+stressPingFlows+64 {
		t.Errorf("ping flood: %d fds at the peak, want at most %d", peak.fds, after.fds+stressPingFlows+64)
	}
	if got := refusals(t, sock)["ping_flows"]; got == 0 {
		t.Errorf("ping flood: no refusal counted (%v)", refusals(t, sock))
	}

	// Spoofed sources: dropped at the link, no socket, no flow.
	before, _ := sampleProc(pid)
	_, peak = flood("spoof", udpDst)
	if peak.udpSockets > before.udpSockets {
		t.Errorf("spoof flood: %d UDP sockets at the peak, %d before: spoofed datagrams made flows", peak.udpSockets, before.udpSockets)
	}
	if got := refusals(t, sock)["spoofed_source"]; got < uint64(n)*9/10 {
		t.Errorf("spoof flood: %d spoofed frames counted of %d sent", got, n)
	}
	checkDial(t, tg, probe, "")

	if long {
		// Every flow expires (pings after 30 s); memory should follow.
		for i := range 8 {
			time.Sleep(5 * time.Second)
			end, _ := sampleProc(pid)
			t.Logf("%d s after the floods: %v (baseline %v)", 5*(i+1), end, base)
		}
		end, _ := sampleProc(pid)
		if end.fds > base.fds+8 || end.udpSockets > base.udpSockets || end.rssKiB > base.rssKiB+stressRSSKept {
			t.Errorf("after every flow expired: %v; want the baseline's fds and sockets (%v), RSS within %d MiB of it", end, base, stressRSSKept>>10)
		}
	}
}
