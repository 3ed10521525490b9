package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/usernet/usernet/link"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Benchmarks over link.Tap instead of the in-memory pipe: the two
// ends of a SOCK_SEQPACKET socketpair stand in for the tap (one frame per
// read/write, non-blocking, Go's poller), so the tap read loop, the
// per-frame writes and the goroutine hand-offs they cause are measured as
// in production. The guest is a second gVisor stack on the other end.
// MTU 65520 as in podman and bench/run.sh.
//
//	go test -run '^$' -bench Tap -benchtime 3s ./stack/

const tapBenchMTU = 65520

// startTapEnv is startEnv with link.Taps on a socketpair, MTU 65520 without
// vnet headers.
func startTapEnv(b *testing.B) *env { return startTapEnvWith(b, tapBenchMTU, false) }

// startTapEnvWith is startTapEnv with the given MTU, and with virtio-net
// headers and GSO on both ends when vnet is set (the guest stack then
// plays the namespace kernel with tap.Offloads on).
func startTapEnvWith(b *testing.B, mtu uint32, vnet bool) *env {
	b.Helper()
	e, _ := startTapEnvOpts(b, mtu, vnet, false)
	return e
}

// startTapEnvOpts is startTapEnvWith for tests and benchmarks, with IPv6
// if v6; it also returns the guest's link.
func startTapEnvOpts(b testing.TB, mtu uint32, vnet, v6 bool) (*env, *link.Tap) {
	b.Helper()
	return startTapEnvCfg(b, mtu, vnet, v6, nil, nil)
}

// startTapEnvCfg is startTapEnvOpts with edit applied to the stack's
// Config and wrap (if not nil) around the guest's link.
func startTapEnvCfg(b testing.TB, mtu uint32, vnet, v6 bool, edit func(*Config), wrap func(gvstack.LinkEndpoint) gvstack.LinkEndpoint) (*env, *link.Tap) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatalf("socketpair: %v", err)
	}
	for _, fd := range fds {
		// Room for a burst of full-size frames, as a tap's queue has.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	stackEnd, guestEnd := os.NewFile(uintptr(fds[0]), "stack-end"), os.NewFile(uintptr(fds[1]), "guest-end")
	stackLink, err := link.New(stackEnd, mtu, stackMAC, vnet, nil)
	if err != nil {
		b.Fatal(err)
	}
	guestLink, err := link.New(guestEnd, mtu, guestMAC, vnet, nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(b)
	cfg.MTU = mtu
	cfg.Plan = testPlan(b, v6)
	if edit != nil {
		edit(&cfg)
	}
	s, err := newStack(cfg, ethernet.New(stackLink))
	if err != nil {
		b.Fatalf("newStack: %v", err)
	}
	s.tapLink = stackLink
	s.counters, s.setCapture = stackLink.Counters, stackLink.SetCapture
	e := &env{s: s, runErr: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.runErr <- s.Run(ctx) }()
	var gl gvstack.LinkEndpoint = ethernet.New(guestLink)
	if wrap != nil {
		gl = wrap(gl)
	}
	e.guest, e.sniff, e.ndp = newGuest(b, gl, v6)
	b.Cleanup(func() {
		e.stop(b)
		// Stop the guest's reader before Destroy: Destroy holds the
		// guest stack's lock while it detaches the link, and a reader
		// in the middle of delivering a frame waits for that lock.
		guestLink.Attach(nil)
		e.guest.Destroy()
		stackEnd.Close()
		guestEnd.Close()
	})
	return e, guestLink
}

// reportLatency reports the median and 99th percentile of lat.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkTapTCPRR is bench/run.sh's rr: a 1-byte ping-pong with a host
// echo server on one connection.
func BenchmarkTapTCPRR(b *testing.B) {
	ln := listenTCP(b, "tcp4", "127.0.0.1:0", echoServe)
	e := startTapEnv(b)
	c, err := guestDial(b, e.guest, netip.AddrPortFrom(gw4, portOf(ln.Addr())))
	if err != nil {
		b.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	buf := []byte{1}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("guest write: %v", err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("guest read: %v", err)
		}
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkTapTCPCRR is bench/run.sh's crr: connect, 1-byte request,
// response, close (the guest closes first). It covers the forwarder's
// handshake path, including the deferred SYN-ACK writes of link.Tap.
func BenchmarkTapTCPCRR(b *testing.B) {
	ln := listenTCP(b, "tcp4", "127.0.0.1:0", echoServe)
	e := startTapEnv(b)
	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))
	buf := []byte{1}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t := time.Now()
		c, err := guestDial(b, e.guest, dst)
		if err != nil {
			b.Fatalf("guest dial #%d: %v", i, err)
		}
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("guest write #%d: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("guest read #%d: %v", i, err)
		}
		c.Close()
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkTapUDPGuestToHost sends 1400-byte datagrams from the guest to
// a host UDP socket as fast as the guest can, and reports the fraction
// delivered (bench/run.sh's UDP ns→host, unlimited).
func BenchmarkTapUDPGuestToHost(b *testing.B) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	pc.SetReadBuffer(4 << 20)
	got := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 2048)
		for {
			pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := pc.Read(buf); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	e := startTapEnv(b)
	g := guestUDP(b, e.guest, false)
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, portOf(pc.LocalAddr())))
	msg := make([]byte, 1400)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		g.WriteTo(msg, dst)
	}
	b.StopTimer()
	n := <-got
	b.ReportMetric(100*float64(n)/float64(b.N), "%delivered")
}

// tapBulkCases are the link set-ups the bulk benchmarks run on.
var tapBulkCases = []struct {
	name string
	mtu  uint32
	vnet bool
}{
	{"mtu1500", 1500, false},
	{"mtu1500-vnet", 1500, true},
	{"mtu65520", tapBenchMTU, false},
	{"mtu65520-vnet", tapBenchMTU, true},
}

// BenchmarkTapTCPGuestToHost is bench/run.sh's bulk ns→host over link.Tap:
// the guest writes 64 KiB at a time to a host sink through the gateway.
func BenchmarkTapTCPGuestToHost(b *testing.B) {
	for _, tc := range tapBulkCases {
		b.Run(tc.name, func(b *testing.B) {
			benchGuestToHost(b, func() *env { return startTapEnvWith(b, tc.mtu, tc.vnet) })
		})
	}
}

// BenchmarkTapTCPHostToGuest is bulk host→ns over link.Tap: a host source
// writes through the gateway connection and the guest reads.
func BenchmarkTapTCPHostToGuest(b *testing.B) {
	for _, tc := range tapBulkCases {
		b.Run(tc.name, func(b *testing.B) {
			benchHostToGuest(b, func() *env { return startTapEnvWith(b, tc.mtu, tc.vnet) })
		})
	}
}

// cpuClock starts counting the process's CPU time (user and system); its
// result reports it per op as "cpu-ns/op", less sensitive than ns/op to
// the machine's other load.
func cpuClock(b *testing.B) func() {
	start := processCPU()
	return func() {
		b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
	}
}

func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// udpRRCases are the link set-ups the UDP request/response benchmarks run on.
var udpRRCases = []struct {
	name string
	vnet bool
}{{"mtu65520", false}, {"mtu65520-vnet", true}}

// BenchmarkTapUDPRR is a 64-byte UDP ping-pong between one guest socket
// and a host echo server: per op, a query through the guest→host fast
// path and its reply back.
func BenchmarkTapUDPRR(b *testing.B) {
	for _, tc := range udpRRCases {
		b.Run(tc.name, func(b *testing.B) {
			pc := udpEchoServer(b, false)
			e := startTapEnvWith(b, tapBenchMTU, tc.vnet)
			g := guestUDP(b, e.guest, false)
			dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, portOf(pc.LocalAddr())))
			msg := make([]byte, 64)
			buf := make([]byte, 2048)
			b.ResetTimer()
			defer cpuClock(b)()
			for i := range b.N {
				if _, err := g.WriteTo(msg, dst); err != nil {
					b.Fatalf("guest write #%d: %v", i, err)
				}
				g.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, _, err := g.ReadFrom(buf); err != nil {
					b.Fatalf("guest read #%d: %v", i, err)
				}
			}
		})
	}
}

// BenchmarkTapUDPFlows is bench/run.sh's udp_flows in small: 64 guest
// sockets, each with one 64-byte query to a host echo server in flight
// (a lost one is sent again after 200 ms); an op is one answered query.
func BenchmarkTapUDPFlows(b *testing.B) {
	const flows = 64
	for _, tc := range udpRRCases {
		b.Run(tc.name, func(b *testing.B) {
			pc := udpEchoServer(b, false)
			e := startTapEnvWith(b, tapBenchMTU, tc.vnet)
			dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw4, portOf(pc.LocalAddr())))
			conns := make([]interface {
				WriteTo([]byte, net.Addr) (int, error)
				ReadFrom([]byte) (int, net.Addr, error)
				SetReadDeadline(time.Time) error
			}, flows)
			for i := range conns {
				conns[i] = guestUDP(b, e.guest, false)
			}
			answered := make(chan struct{}, flows)
			stop := make(chan struct{})
			msg := make([]byte, 64)
			for _, c := range conns {
				go func() {
					buf := make([]byte, 2048)
					for {
						select {
						case <-stop:
							return
						default:
						}
						c.WriteTo(msg, dst)
						c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
						if _, _, err := c.ReadFrom(buf); err == nil {
							select {
							case answered <- struct{}{}:
							case <-stop:
								return
							}
						}
					}
				}()
			}
			b.ResetTimer()
			report := cpuClock(b)
			for range b.N {
				<-answered
			}
			b.StopTimer()
			report()
			close(stop)
		})
	}
}
