package stack

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestReadLoop: readLoop hands over every datagram, in order, behind the
// reply headroom and with its source, for both families: those queued
// before it starts, one that comes in while another is being handled
// (the poller's wake-up for it must not be lost), one sent while it
// waits; a queued ICMP error ends it with that error.
//
// Also with recvfrom, where recvmmsg is refused.
func TestReadLoop(t *testing.T) {
	for _, recvfrom := range []bool{false, true} {
		noRecvmmsg.Store(recvfrom)
		for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
			name := tc.network
			if recvfrom {
				name += "/recvfrom"
			}
			t.Run(name, func(t *testing.T) { testReadLoop(t, tc.network, tc.addr) })
		}
	}
	noRecvmmsg.Store(false)
}

func testReadLoop(t *testing.T, network, addr string) {
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	rc, err := pc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = setRecvErr(int(fd), network == "udp6") })
	if err != nil {
		t.Fatal(err)
	}
	h := &udpHost{pc: pc, rc: rc}
	client, err := net.DialUDP(network, nil, pc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	from := client.LocalAddr().(*net.UDPAddr).AddrPort()

	type got struct {
		data string
		from netip.AddrPort
	}
	var r udpRecv
	ch := make(chan got, 16)
	first := true
	done := make(chan error, 1)
	for i := range 3 {
		client.Write(fmt.Appendf(nil, "datagram %d", i))
	}
	time.Sleep(50 * time.Millisecond) // all three queued
	go func() {
		done <- h.readLoop(&r, func(buf []byte, src netip.AddrPort) {
			if first && string(buf[replyHeadroom:]) == "datagram 2" {
				// The last of the queue (taken alone, after two
				// at a time): one that comes in while it is being
				// handled must not wait for a later one.
				first = false
				client.Write([]byte("meanwhile"))
				time.Sleep(50 * time.Millisecond)
			}
			ch <- got{string(buf[replyHeadroom:]), src}
		})
	}()
	want := []string{"datagram 0", "datagram 1", "datagram 2", "meanwhile", "later"}
	for i, w := range want {
		if w == "later" {
			// Sent while the reader waits.
			time.Sleep(50 * time.Millisecond)
			client.Write([]byte(w))
		}
		select {
		case g := <-ch:
			if g.data != w || g.from != from {
				t.Errorf("datagram %d: %q from %v, want %q from %v", i, g.data, g.from, w, from)
			}
		case err := <-done:
			t.Fatalf("readLoop returned %v before %q", err, w)
		case <-time.After(2 * time.Second):
			t.Fatalf("no %q within 2s", w)
		}
	}
	// A datagram to a closed port: its ICMP error ends the loop.
	closed, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	to := closed.LocalAddr().(*net.UDPAddr).AddrPort()
	closed.Close()
	h.write([]byte("to nobody"), to)
	select {
	case err := <-done:
		if !isICMPError(err) {
			t.Errorf("readLoop after a datagram to a closed port: %v, want an ICMP error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no ICMP error within 5s")
	}
}
