package stack

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/usernet/usernet/link"
	"github.com/usernet/usernet/pcap"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
)

// TestCapture: with Config.Capture, a TCP exchange through the gateway is
// in the pcap file, both ways: the guest's SYN, the stack's SYN-ACK and
// the payload each way. The stack is built by New on a socketpair that
// stands in for the tap (as in tapbench_test.go), so that the capture goes
// the way --pcap's does: Config, link.Tap, pcap.Writer, file.
func TestCapture(t *testing.T) {
	for _, tc := range []struct {
		name string
		vnet bool
	}{{"plain", false}, {"vnet", true}} {
		t.Run(tc.name, func(t *testing.T) { testCapture(t, tc.vnet) })
	}
}

func testCapture(t *testing.T, vnet bool) {
	ln := listenTCP(t, "tcp4", "127.0.0.1:0", echoServe)
	dst := netip.AddrPortFrom(gw4, portOf(ln.Addr()))

	path := filepath.Join(t.TempDir(), "tap.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := pcap.NewWriter(f, t.Logf)
	if err != nil {
		t.Fatal(err)
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	stackEnd, guestEnd := os.NewFile(uintptr(fds[0]), "stack-end"), os.NewFile(uintptr(fds[1]), "guest-end")
	defer guestEnd.Close()
	cfg := testConfig(t)
	cfg.Tap, cfg.VnetHdr, cfg.Capture = stackEnd, vnet, w
	s, err := New(cfg) // owns stackEnd from here
	if err != nil {
		stackEnd.Close()
		t.Fatalf("New: %v", err)
	}
	guestLink, err := link.New(guestEnd, defaultMTU, guestMAC, vnet, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{s: s, runErr: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.runErr <- s.Run(ctx) }()
	e.guest, e.sniff, e.ndp = newGuest(t, ethernet.New(guestLink), false)

	// A request in one write, large enough for TSO segments with vnet
	// headers, and its echo.
	request := bytes.Repeat([]byte("capture me "), 20000)
	c, err := guestDial(t, e.guest, dst)
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	go c.Write(request)
	echo := make([]byte, len(request))
	if _, err := io.ReadFull(c, echo); err != nil || !bytes.Equal(echo, request) {
		t.Fatalf("echo: %v", err)
	}
	c.Close()

	e.stop(t)
	guestLink.Attach(nil)
	e.guest.Destroy()
	if err := w.Close(); err != nil {
		t.Fatalf("pcap: %v", err)
	}

	f.Seek(0, io.SeekStart)
	recs, err := pcap.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	// The payload each way, placed by sequence number: a retransmitted
	// segment lands where it belongs.
	up, down := newStream(len(request)), newStream(len(request))
	var syn, synAck, largest int
	for _, r := range recs {
		largest = max(largest, len(r.Data))
		eth := header.Ethernet(r.Data)
		if len(r.Data) < header.EthernetMinimumSize || eth.Type() != header.IPv4ProtocolNumber {
			continue
		}
		ip := header.IPv4(r.Data[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.TCPProtocolNumber {
			continue
		}
		tcp := header.TCP(ip.Payload())
		src, dstAddr := netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
		switch {
		case src == guest4 && dstAddr == gw4 && tcp.DestinationPort() == dst.Port():
			if tcp.Flags() == header.TCPFlagSyn {
				syn++
			}
			up.add(tcp)
		case src == gw4 && dstAddr == guest4 && tcp.SourcePort() == dst.Port():
			if tcp.Flags() == header.TCPFlagSyn|header.TCPFlagAck {
				synAck++
			}
			down.add(tcp)
		}
	}
	if syn == 0 || synAck == 0 {
		t.Errorf("%d records: %d SYNs, %d SYN-ACKs; want the handshake", len(recs), syn, synAck)
	}
	if !up.complete() || !bytes.Equal(up.data, request) {
		t.Errorf("guest → gateway: %d bytes of payload captured, want the %d-byte request", up.got, len(request))
	}
	if !down.complete() || !bytes.Equal(down.data, request) {
		t.Errorf("gateway → guest: %d bytes of payload captured, want the %d-byte echo", down.got, len(request))
	}
	// With offloads the frames are captured as they cross the tap:
	// segments larger than the MTU.
	if vnet && largest <= defaultMTU+header.EthernetMinimumSize {
		t.Errorf("largest frame %d bytes; want TSO segments larger than the MTU", largest)
	}
	if !vnet && largest > defaultMTU+header.EthernetMinimumSize {
		t.Errorf("largest frame %d bytes; want none larger than the MTU", largest)
	}
}

// stream puts one direction's TCP payload back together from captured
// segments.
type stream struct {
	isn     uint32 // the SYN's sequence number
	synSeen bool
	data    []byte
	have    []bool
	got     int // bytes of data placed
}

func newStream(n int) *stream { return &stream{data: make([]byte, n), have: make([]bool, n)} }

func (s *stream) add(tcp header.TCP) {
	if tcp.Flags().Contains(header.TCPFlagSyn) {
		s.isn, s.synSeen = tcp.SequenceNumber(), true
		return
	}
	if !s.synSeen {
		return
	}
	off := int(tcp.SequenceNumber() - s.isn - 1)
	for i, b := range tcp.Payload() {
		if j := off + i; j >= 0 && j < len(s.data) && !s.have[j] {
			s.data[j], s.have[j] = b, true
			s.got++
		}
	}
}

func (s *stream) complete() bool { return s.got == len(s.data) }
