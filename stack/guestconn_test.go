package stack

import (
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TestReadNotifyInterruptBeforeWait: an InterruptWait that comes before
// WaitReadable (relay's park timer firing while the direction copies) ends
// that wait; lost, the direction's goroutine would wait for data instead
// of parking, and an idle connection would keep it.
func TestReadNotifyInterruptBeforeWait(t *testing.T) {
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) { io.Copy(io.Discard, c) })
	e := startEnv(t, testConfig(t))
	// A connected endpoint of the guest's, with nothing to read.
	var wq waiter.Queue
	ep, err := e.guest.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if err != nil {
		t.Fatalf("NewEndpoint: %v", err)
	}
	defer ep.Close()
	we, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(gw4), Port: portOf(ln.Addr())})
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest's connect did not complete")
	}
	wq.EventUnregister(&we)
	if err := ep.LastError(); err != nil {
		t.Fatalf("connect: %v", err)
	}
	n := newReadNotify(ep, &wq)
	for i := range 3 {
		n.InterruptWait()
		done := make(chan bool, 1)
		go func() {
			readable, _ := n.WaitReadable()
			done <- readable
		}()
		select {
		case readable := <-done:
			if readable {
				t.Fatalf("round %d: an endpoint with nothing to read waited readable", i)
			}
		case <-time.After(10 * time.Second):
			n.InterruptWait() // let the goroutine end
			t.Fatalf("round %d: WaitReadable after InterruptWait did not return", i)
		}
	}
}
