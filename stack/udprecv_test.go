package stack

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestReadBatch: readBatch takes queued datagrams up to two at a time,
// each behind the reply headroom and with its source, for both families;
// after a call that found the queue empty it waits for the next datagram
// instead of missing it; a queued ICMP error comes back as the read's
// error.
func TestReadBatch(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			pc, err := net.ListenUDP(tc.network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr)))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			rc, err := pc.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			rc.Control(func(fd uintptr) { err = setRecvErr(int(fd), tc.network == "udp6") })
			if err != nil {
				t.Fatal(err)
			}
			h := &udpHost{pc: pc, rc: rc}
			client, err := net.DialUDP(tc.network, nil, pc.LocalAddr().(*net.UDPAddr))
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
			read := func() ([]got, error) {
				var out []got
				err := h.readBatch(&r, func(buf []byte, src netip.AddrPort) {
					out = append(out, got{string(buf[replyHeadroom:]), src})
				})
				return out, err
			}
			for i := range 3 {
				client.Write(fmt.Appendf(nil, "datagram %d", i))
			}
			time.Sleep(50 * time.Millisecond) // all three queued
			var all []got
			calls := 0
			for len(all) < 3 {
				g, err := read()
				if err != nil {
					t.Fatalf("readBatch: %v", err)
				}
				calls++
				all = append(all, g...)
			}
			if calls != 2 {
				t.Errorf("%d calls for 3 queued datagrams, want 2 (two at a time)", calls)
			}
			for i, g := range all {
				if want := fmt.Sprintf("datagram %d", i); g.data != want || g.from != from {
					t.Errorf("datagram %d: %q from %v, want %q from %v", i, g.data, g.from, want, from)
				}
			}
			// The last call took one: the next waits for a datagram
			// sent later.
			time.AfterFunc(50*time.Millisecond, func() { client.Write([]byte("later")) })
			g, err := read()
			if err != nil || len(g) != 1 || g[0].data != "later" {
				t.Fatalf("after the queue emptied: %v, %v; want the later datagram", g, err)
			}
			// A datagram to a closed port: its ICMP error is the next
			// read's error.
			closed, err := net.ListenUDP(tc.network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr)))
			if err != nil {
				t.Fatal(err)
			}
			to := closed.LocalAddr().(*net.UDPAddr).AddrPort()
			closed.Close()
			h.write([]byte("to nobody"), to)
			done := make(chan error, 1)
			go func() {
				_, err := read()
				done <- err
			}()
			select {
			case err := <-done:
				if !isICMPError(err) {
					t.Errorf("read after a datagram to a closed port: %v, want an ICMP error", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no ICMP error within 5s")
			}
		})
	}
}
