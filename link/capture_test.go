package link

import (
	"bytes"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/usernet/usernet/tap"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recorder is a Capture that keeps every frame, one per call.
type recorder struct {
	mu     sync.Mutex
	frames [][]byte
}

func (r *recorder) WriteFrame(parts ...[]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, bytes.Join(parts, nil))
}

func (r *recorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.frames
	r.frames = nil
	return f
}

// chanDispatcher hands the frames the link delivers to the test.
type chanDispatcher chan []byte

func (d chanDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *gvstack.PacketBuffer) {
	b := pkt.ToBuffer()
	d <- b.Flatten()
}

func (chanDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *gvstack.PacketBuffer) {}

// tapPair is a Tap on one end of a SOCK_SEQPACKET socketpair, which stands
// in for the tap as in stack's tap benchmarks; the other end is the
// namespace.
func tapPair(t *testing.T, vnet bool) (*Tap, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	}
	tapEnd, peer := os.NewFile(uintptr(fds[0]), "tap-end"), os.NewFile(uintptr(fds[1]), "peer")
	t.Cleanup(func() { tapEnd.Close(); peer.Close() })
	l, err := New(tapEnd, 1500, "\x02\x00\x00\x00\x00\x01", vnet, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l, peer
}

func frameOf(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i*7)
	}
	return f
}

// TestCapture: every frame read from and written to the tap reaches the
// Capture once, whole (also when read or written in several pieces), and
// without the virtio-net header.
func TestCapture(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		name := "plain"
		if vnet {
			name = "vnet"
		}
		t.Run(name, func(t *testing.T) {
			l, peer := tapPair(t, vnet)
			rec := &recorder{}
			l.SetCapture(rec)
			d := make(chanDispatcher, 1)
			l.Attach(d)
			defer l.Attach(nil)

			// In: sizes within the head, across the head and the body,
			// and, with offloads, a 64 KiB segment.
			sizes := []int{60, headSplit, headSplit + 1, 1514}
			if vnet {
				sizes = append(sizes, maxGSOFrame)
			}
			for i, n := range sizes {
				frame := frameOf(n, byte(i))
				wire := frame
				if vnet {
					// A header the link does not read; it must not
					// show in the capture.
					wire = append(bytes.Repeat([]byte{0xee}, tap.VnetHdrLen), frame...)
				}
				if _, err := peer.Write(wire); err != nil {
					t.Fatalf("write a %d-byte frame: %v", n, err)
				}
				select {
				case got := <-d:
					if !bytes.Equal(got, frame) {
						t.Fatalf("delivered %d bytes, want the %d-byte frame", len(got), n)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("the %d-byte frame was not delivered", n)
				}
				if got := rec.take(); len(got) != 1 || !bytes.Equal(got[0], frame) {
					t.Fatalf("in, %d bytes: captured %d frames, want the frame once", n, len(got))
				}
			}

			// Out: a frame in two pieces (link header, payload), written
			// with one writev.
			frame := frameOf(1000, 9)
			pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{
				ReserveHeaderBytes: 14,
				Payload:            buffer.MakeWithData(frame[14:]),
			})
			copy(pkt.LinkHeader().Push(14), frame[:14])
			if n := len(pkt.AsSlices()); n < 2 {
				t.Fatalf("the test packet is in %d piece, want several", n)
			}
			var pkts gvstack.PacketBufferList
			pkts.PushBack(pkt)
			if n, err := l.WritePackets(pkts); n != 1 || err != nil {
				t.Fatalf("WritePackets = %d, %v", n, err)
			}
			pkt.DecRef()
			buf := make([]byte, 4096)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := peer.Read(buf)
			if err != nil {
				t.Fatalf("read the written frame: %v", err)
			}
			wire := buf[:n]
			if vnet {
				wire = wire[tap.VnetHdrLen:]
			}
			if !bytes.Equal(wire, frame) {
				t.Fatalf("wrote %d bytes, want the %d-byte frame", len(wire), len(frame))
			}
			if got := rec.take(); len(got) != 1 || !bytes.Equal(got[0], frame) {
				t.Fatalf("out: captured %d frames, want the frame once", len(got))
			}
		})
	}
}

// TestCaptureWriteAllocs: handing a written frame to a capture allocates
// nothing beyond what writing it does (the list of its pieces).
func TestCaptureWriteAllocs(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		l, peer := tapPair(t, vnet)
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{
			ReserveHeaderBytes: 14,
			Payload:            buffer.MakeWithData(make([]byte, 100)),
		})
		pkt.LinkHeader().Push(14)
		drain := make([]byte, 4096)
		write := func() {
			if err := l.writePacket(pkt); err != nil {
				t.Fatalf("writePacket: %v", err)
			}
			peer.Read(drain)
		}
		without := testing.AllocsPerRun(100, write)
		l.SetCapture(&countCapture{})
		with := testing.AllocsPerRun(100, write)
		if with != without {
			t.Errorf("vnet %v: %v allocations per frame with a capture, %v without; want no more", vnet, with, without)
		}
		pkt.DecRef()
	}
}

type countCapture struct{ n int }

func (c *countCapture) WriteFrame(parts ...[]byte) { c.n++ }
