package stack

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestSeqArithmetic(t *testing.T) {
	const top = ^uint32(0)
	for _, c := range []struct {
		a, b     uint32
		lt, le   bool
		whatCase string
	}{
		{1, 2, true, true, "plain"},
		{2, 2, false, true, "equal"},
		{top, 0, true, true, "across the wrap"},
		{0, top, false, false, "across the wrap, reversed"},
	} {
		if seqLT(c.a, c.b) != c.lt || seqLE(c.a, c.b) != c.le {
			t.Errorf("%s: seqLT(%d, %d), seqLE = %v, %v; want %v, %v", c.whatCase, c.a, c.b, seqLT(c.a, c.b), seqLE(c.a, c.b), c.lt, c.le)
		}
	}
}

func TestTrimData(t *testing.T) {
	const top = ^uint32(0)
	for _, c := range []struct {
		seq, rcvNxt uint32
		n           int
		skip        int
		ok          bool
	}{
		{100, 100, 10, 0, true},      // in order
		{95, 100, 10, 5, true},       // partly old: a retransmission overlapping new data
		{90, 100, 10, 0, false},      // all old
		{99, 100, 1, 0, false},       // a keep-alive probe (the byte before rcvNxt)
		{99, 100, 0, 0, false},       // an empty keep-alive probe
		{101, 100, 10, 0, false},     // out of order: beyond rcvNxt
		{top - 4, 2, 10, 7, true},    // overlap across the wrap
		{1 << 31, 100, 10, 0, false}, // half the space away
	} {
		skip, ok := trimData(c.seq, c.rcvNxt, c.n)
		if skip != c.skip || ok != c.ok {
			t.Errorf("trimData(%d, %d, %d) = %d, %v; want %d, %v", c.seq, c.rcvNxt, c.n, skip, ok, c.skip, c.ok)
		}
	}
}

func TestAckedBytes(t *testing.T) {
	for _, c := range []struct {
		ack, una, max uint32
		fin           bool
		end           uint32
		n             uint32
		ok            bool
	}{
		{110, 100, 120, false, 0, 10, true},
		{100, 100, 120, false, 0, 0, false},  // a duplicate
		{121, 100, 120, false, 0, 0, false},  // never sent
		{90, 100, 120, false, 0, 0, false},   // old
		{121, 100, 121, true, 120, 20, true}, // data and the FIN
		{121, 120, 121, true, 120, 0, true},  // only the FIN
	} {
		n, ok := ackedBytes(c.ack, c.una, c.max, c.fin, c.end)
		if n != c.n || ok != c.ok {
			t.Errorf("ackedBytes(%d, %d, %d, %v, %d) = %d, %v; want %d, %v", c.ack, c.una, c.max, c.fin, c.end, n, ok, c.n, c.ok)
		}
	}
}

func TestWindowField(t *testing.T) {
	for _, c := range []struct {
		wnd  uint32
		ws   uint8
		want uint16
	}{
		{1000, 0, 1000},
		{1 << 20, 0, 0xffff},
		{1 << 20, 5, 1 << 15},
		{0, 5, 0},
		{1 << 30, 5, 0xffff},
	} {
		if got := windowField(c.wnd, c.ws); got != c.want {
			t.Errorf("windowField(%d, %d) = %d, want %d", c.wnd, c.ws, got, c.want)
		}
	}
	if rstAcceptable(101, 100) || !rstAcceptable(100, 100) {
		t.Error("rstAcceptable must take exactly rcvNxt")
	}
}

// startDirectEnv is a stack with the direct TCP path on a socketpair
// tap, its guest a gVisor stack; wrap (if not nil) goes around the
// guest's link.
func startDirectEnv(t *testing.T, v6 bool, wrap func(gvstack.LinkEndpoint) gvstack.LinkEndpoint) (*env, netip.Addr) {
	t.Helper()
	return startDirectEnvVnet(t, v6, false, wrap)
}

// startDirectEnvVnet is startDirectEnv with virtio-net headers and GSO on
// both ends if vnet.
func startDirectEnvVnet(t *testing.T, v6, vnet bool, wrap func(gvstack.LinkEndpoint) gvstack.LinkEndpoint) (*env, netip.Addr) {
	t.Helper()
	e, _ := startTapEnvCfg(t, 1500, vnet, v6, func(c *Config) { c.DirectTCP = true }, wrap)
	if e.s.direct == nil {
		t.Fatal("the direct path is off with Config.DirectTCP set")
	}
	if v6 {
		waitSLAAC(t, e)
		return e, gw6
	}
	return e, gw4
}

// directFlows is how many flows the direct path holds.
func (d *directPath) flowCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

func loopbackNet(v6 bool) (network, addr string) {
	if v6 {
		return "tcp6", "[::1]:0"
	}
	return "tcp4", "127.0.0.1:0"
}

func forBothFamilies(t *testing.T, f func(t *testing.T, v6 bool)) {
	t.Run("v4", func(t *testing.T) { f(t, false) })
	t.Run("v6", func(t *testing.T) { f(t, true) })
}

func TestDirectTCPEcho(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		ln := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), echoServe)
		e, gw := startDirectEnv(t, v6, nil)
		c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		defer c.Close()
		if n := e.s.direct.flowCount(); n != 1 {
			t.Errorf("the direct path holds %d flows, want 1", n)
		}
		buf := make([]byte, 5)
		for i := range 20 {
			msg := []byte{'p', 'i', 'n', 'g', byte('a' + i)}
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("guest write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
				t.Fatalf("echo %d = %q, %v; want %q", i, buf, err, msg)
			}
		}
		conns := e.s.Connections()
		if len(conns) != 1 || conns[0].BytesOut != 100 || conns[0].BytesIn != 100 || conns[0].Proto != "tcp" {
			t.Errorf("Connections() = %+v; want one tcp flow of 100 bytes each way", conns)
		}
		c.Close()
		waitFor(t, "the direct flow to end", func() bool { return e.s.direct.flowCount() == 0 && len(e.s.Connections()) == 0 })
	})
}

func loopbackNetwork(v6 bool) string {
	if v6 {
		return "tcp6"
	}
	return "tcp4"
}

func loopbackAddr(v6 bool) string {
	if v6 {
		return "[::1]:0"
	}
	return "127.0.0.1:0"
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDirectTCPBulk sends a few MB both ways at once through an echo
// server and compares every byte.
// With vnet, the host's data goes to the guest in GSO frames.
func TestDirectTCPBulk(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "vnet"}[vnet], func(t *testing.T) { testDirectTCPBulk(t, vnet) })
	}
}

func testDirectTCPBulk(t *testing.T, vnet bool) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		ln := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), echoServe)
		e, gw := startDirectEnvVnet(t, v6, vnet, nil)
		c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		defer c.Close()
		const size = 6 << 20
		data := make([]byte, size)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("guest read after %d bytes: %v", len(got), err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("guest write: %v", err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("echoed %d bytes (sha256 %x), want the %d sent (sha256 %x)", len(got), sha256.Sum256(got), size, sha256.Sum256(data))
		}
		if st := e.s.Stats(); vnet && st.Tap.TxBytes/max(st.Tap.TxFrames, 1) < 4*1500 {
			t.Errorf("%d bytes in %d frames to the guest: want GSO frames of several segments", st.Tap.TxBytes, st.Tap.TxFrames)
		}
	})
}

func TestDirectTCPHalfCloseBothWays(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		e, gw := startDirectEnv(t, v6, nil)
		halfCloseBothWays(t, e.guest, gw, v6)
		waitFor(t, "both direct flows to end", func() bool { return e.s.direct.flowCount() == 0 })
	})
}

func TestDirectTCPResetBothWays(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		ln := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), func(c net.Conn) {
			io.ReadFull(c, make([]byte, 1))
			c.(*net.TCPConn).SetLinger(0)
			c.Close() // RST
		})
		hostErr := make(chan error, 1)
		ln2 := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), func(c net.Conn) {
			io.WriteString(c, "unread")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.ReadAll(c)
			hostErr <- err
		})
		e, gw := startDirectEnv(t, v6, nil)

		c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		io.WriteString(c, "x")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err = io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("guest read after host RST: %v, want connection reset", err)
		}
		c.Close()

		c, err = guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln2.Addr())))
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		io.WriteString(c, "y")
		waitFor(t, "the guest to get the host's bytes and the host the guest's", func() bool {
			for _, f := range e.s.Connections() {
				if f.BytesOut == 1 && f.BytesIn == 6 {
					return true
				}
			}
			return false
		})
		c.Close() // unread data: a RST
		if err := <-hostErr; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("host read after guest RST: %v, want ECONNRESET", err)
		}
		waitFor(t, "both direct flows to end", func() bool { return e.s.direct.flowCount() == 0 })
	})
}

func TestDirectTCPRefused(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		e, gw := startDirectEnv(t, v6, nil)
		ln, err := net.Listen(loopbackNetwork(v6), loopbackAddr(v6))
		if err != nil {
			t.Fatal(err)
		}
		port := portOf(ln.Addr())
		ln.Close()
		dialRefused(t, e, netip.AddrPortFrom(gw, port))
		if n := e.s.direct.flowCount(); n != 0 {
			t.Errorf("the direct path holds %d flows after a refused dial, want 0", n)
		}
	})
}

// loseOut is a link endpoint that loses the guest's outbound packets
// lose matches.
type loseOut struct {
	nested.Endpoint
	mu   sync.Mutex
	lose func(*gvstack.PacketBuffer) bool // guarded by mu
}

func (l *loseOut) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	var keep gvstack.PacketBufferList
	l.mu.Lock()
	for _, p := range pkts.AsSlice() {
		if l.lose != nil && l.lose(p) {
			continue
		}
		keep.PushBack(p.IncRef())
	}
	l.mu.Unlock()
	defer keep.DecRef()
	n, err := l.Endpoint.WritePackets(keep)
	return n + pkts.Len() - keep.Len(), err
}

// dialThroughLoss starts a direct-path stack whose guest's outbound
// packets pass a loseOut, and dials ln from the guest.
func dialThroughLoss(t *testing.T, v6 bool, ln net.Listener) (*env, *loseOut, net.Conn) {
	t.Helper()
	lo := &loseOut{}
	e, gw := startDirectEnv(t, v6, func(child gvstack.LinkEndpoint) gvstack.LinkEndpoint {
		lo.Endpoint.Init(child, lo)
		return lo
	})
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	return e, lo, c
}

// TestDirectTCPRetransmission loses the guest's first data segment and
// the first data segment to the guest: both sides' retransmissions must
// get the bytes through, in order.
func TestDirectTCPRetransmission(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		ln := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), echoServe)
		e, lo, c := dialThroughLoss(t, v6, ln)
		defer c.Close()
		var lostOut, lostIn int
		lo.mu.Lock()
		lo.lose = func(p *gvstack.PacketBuffer) bool {
			if lostOut == 0 && p.TransportProtocolNumber == header.TCPProtocolNumber && p.Data().Size() > 0 {
				lostOut++
				return true
			}
			return false
		}
		lo.mu.Unlock()
		hl := header.IPv4MinimumSize
		if v6 {
			hl = header.IPv6MinimumSize
		}
		var mu sync.Mutex
		e.sniff.drop(func(b []byte) bool {
			mu.Lock()
			defer mu.Unlock()
			if lostIn == 0 && len(b) > hl+header.TCPMinimumSize && int(header.TCP(b[hl:]).DataOffset()) < len(b)-hl {
				lostIn++
				return true
			}
			return false
		})
		msg := []byte("sent twice, received once")
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("guest write: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
		}
		mu.Lock()
		defer mu.Unlock()
		lo.mu.Lock()
		defer lo.mu.Unlock()
		if lostOut != 1 || lostIn != 1 {
			t.Errorf("lost %d segments from the guest and %d to it, want 1 and 1", lostOut, lostIn)
		}
	})
}

// TestDirectTCPHostileSegments sends a direct flow's 4-tuple segments a
// broken or hostile namespace could: none may reach the host socket, end
// the flow, or take the process down.
func TestDirectTCPHostileSegments(t *testing.T) {
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	e, gw := startDirectEnv(t, false, nil)
	dst := netip.AddrPortFrom(gw, portOf(ln.Addr()))
	c, err := guestDial(t, e.guest, dst)
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	echo := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("guest write: %v", err)
		}
		buf := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
		}
	}
	echo("before")
	src := netip.MustParseAddrPort(c.LocalAddr().String())
	e.s.direct.mu.Lock()
	dc := e.s.direct.conns[directKey{src, dst}]
	e.s.direct.mu.Unlock()
	if dc == nil {
		t.Fatal("no direct flow for the connection")
	}
	dc.mu.Lock()
	rcvNxt, sndNxt := dc.rcvNxt, dc.sndNxt
	dc.mu.Unlock()

	seg := func(seq, ack uint32, flags header.TCPFlags, doff uint8, payload []byte) []byte {
		tcp := make([]byte, header.TCPMinimumSize+len(payload))
		header.TCP(tcp).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
			DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
		tcp[12] = doff << 4
		copy(tcp[header.TCPMinimumSize:], payload)
		return ipv4Packet(src.Addr(), dst.Addr(), header.TCPProtocolNumber, tcp)
	}
	evil := []byte("EVIL")
	for _, p := range [][]byte{
		seg(rcvNxt+1000, sndNxt, header.TCPFlagRst, 5, nil),                                // RST in the window, not at RCV.NXT
		seg(rcvNxt+1<<30, sndNxt, header.TCPFlagRst|header.TCPFlagAck, 5, nil),             // RST far away
		seg(rcvNxt+1<<30, sndNxt, header.TCPFlagAck|header.TCPFlagPsh, 5, evil),            // data far out of the window
		seg(rcvNxt-100, sndNxt, header.TCPFlagAck|header.TCPFlagPsh, 5, evil),              // old data
		seg(rcvNxt, sndNxt+1<<20, header.TCPFlagAck, 5, nil),                               // acknowledges what was never sent
		seg(rcvNxt, sndNxt, header.TCPFlagAck|header.TCPFlagPsh, 15, evil),                 // data offset beyond the segment
		seg(rcvNxt, sndNxt, header.TCPFlagAck|header.TCPFlagPsh, 2, evil),                  // data offset too small
		seg(rcvNxt, 0, header.TCPFlagSyn, 5, nil),                                          // a SYN on the flow
		seg(rcvNxt, sndNxt, header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagUrg, 5, nil), // nonsense flags
		seg(rcvNxt, sndNxt, header.TCPFlagPsh, 5, evil),                                    // data without ACK
		seg(rcvNxt, sndNxt, header.TCPFlagAck, 5, nil)[:header.IPv4MinimumSize+10],         // truncated header
	} {
		injectFrame(t, e.guest, header.IPv4ProtocolNumber, stackMAC, p)
	}
	echo("after")
	if n := e.s.direct.flowCount(); n != 1 {
		t.Errorf("the direct path holds %d flows, want 1", n)
	}
	if conns := e.s.Connections(); len(conns) != 1 || conns[0].BytesOut != uint64(len("before")+len("after")) {
		t.Errorf("Connections() = %+v; want one flow of %d bytes out", conns, len("before")+len("after"))
	}
}

// TestDirectTCPStackStopResetsFlows stops the Stack under a live direct
// flow: Run must return, and the host peer must see the connection reset.
func TestDirectTCPStackStopResetsFlows(t *testing.T) {
	goroutineLeakCheck(t)
	hostErr := make(chan error, 1)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		io.WriteString(c, "hi")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		hostErr <- err
	})
	e, gw := startDirectEnv(t, false, nil)
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("guest read: %v", err)
	}
	e.stop(t)
	if err := <-hostErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("host read after the Stack stopped: %v, want ECONNRESET", err)
	}
}

// TestDirectTCPHoldsBeyondHole loses one data segment from the guest in
// the middle of a larger write: the segments after it are held until the
// retransmission fills the hole, so that the guest (which does not use
// SACK with us) sends again only the one it lost, and the host gets every
// byte in order. Held bytes are given back once the flow ends.
func TestDirectTCPHoldsBeyondHole(t *testing.T) {
	forBothFamilies(t, func(t *testing.T, v6 bool) {
		goroutineLeakCheck(t)
		got := make(chan []byte, 1)
		ln := listenTCP(t, loopbackNetwork(v6), loopbackAddr(v6), func(c net.Conn) {
			b, _ := io.ReadAll(c)
			got <- b
			c.Close()
		})
		e, lo, c := dialThroughLoss(t, v6, ln)
		var seen, lost int
		lo.mu.Lock()
		lo.lose = func(p *gvstack.PacketBuffer) bool {
			if p.TransportProtocolNumber != header.TCPProtocolNumber || p.Data().Size() == 0 {
				return false
			}
			seen++
			if seen == 3 {
				lost++
				return true
			}
			return false
		}
		lo.mu.Unlock()
		msg := make([]byte, 40*1400)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		before := e.guest.Stats().TCP.Retransmits.Value()
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("guest write: %v", err)
		}
		c.Close()
		select {
		case b := <-got:
			if !bytes.Equal(b, msg) {
				t.Fatalf("the host got %d bytes, not the %d written", len(b), len(msg))
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the host did not get the data")
		}
		lo.mu.Lock()
		if lost != 1 {
			t.Errorf("lost %d segments, want 1", lost)
		}
		lo.mu.Unlock()
		if n := e.guest.Stats().TCP.Retransmits.Value() - before; n != 1 {
			t.Errorf("the guest retransmitted %d segments for one lost, want 1", n)
		}
		waitFor(t, "the flow's end", func() bool { return e.s.direct.flowCount() == 0 })
		if n := e.s.direct.held.Load(); n != 0 {
			t.Errorf("%d bytes still counted as held after the flow ended", n)
		}
	})
}

// TestDirectTCPIdleSmallBuffer: a flow whose host socket has a small send
// buffer (a remote host's, at first: the kernel sizes it from the path's
// MSS) stays silent when idle. The window it offers is small; its update
// must wait for the socket to drain, not loop on a socket that is
// writable already.
func TestDirectTCPIdleSmallBuffer(t *testing.T) {
	testHookDirectSocket = func(fd int) { syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 32<<10) }
	t.Cleanup(func() { testHookDirectSocket = nil })
	goroutineLeakCheck(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	e, gw := startDirectEnv(t, false, nil)
	c, err := guestDial(t, e.guest, netip.AddrPortFrom(gw, portOf(ln.Addr())))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	msg := make([]byte, 3000)
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("guest write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatalf("echo: %v", err)
	}
	port := portOf(ln.Addr())
	time.Sleep(100 * time.Millisecond) // delayed ACKs, both sides
	before := pureAcks(e.sniff, port)
	time.Sleep(300 * time.Millisecond)
	if n := pureAcks(e.sniff, port) - before; n > 1 {
		t.Errorf("an idle flow sent the guest %d ACKs in 300 ms, want none", n)
	}
}
