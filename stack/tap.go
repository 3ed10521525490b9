package stack

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/usernet/usernet/tap"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tapLink is the link endpoint on the tap fd. It moves whole Ethernet
// frames and leaves the header to ethernet.New, which wraps it.
//
// It replaces gVisor's fdbased endpoint, whose readv dispatcher ends its
// read loop for good on the first frame that is shorter than an Ethernet
// header or unicast to another MAC (packet_dispatchers.go returns
// `false, nil`): one stray frame from the namespace would take the whole
// network down (integration TestMalformedFrames). Here every frame is
// handed up and ethernet.New/the NIC drop what they do not want.
//
// Reads and writes go through Go's poller (the fd is non-blocking), so
// Attach(nil) stops the reader with a read deadline; no stop pipe needed.
type tapLink struct {
	file    *os.File
	raw     syscall.RawConn
	mtu     uint32
	addr    tcpip.LinkAddress
	onError func(error) // a read failed: the namespace is gone

	// vnetHdr: the tap was opened with IFF_VNET_HDR and TSO/CSUM offloads
	// (tap.Offloads), so every frame carries a virtio_net_hdr both ways,
	// the stack hands us TCP segments of up to gsoMaxSize with partial
	// checksums (HostGSO), and the kernel hands us the same (see vnet.go).
	vnetHdr bool

	mu         sync.Mutex
	dispatcher gvstack.NetworkDispatcher // +checklocks:mu
	stopping   bool                      // +checklocks:mu
	wg         sync.WaitGroup            // the reader and the SYN writer

	// syns carries copies of outgoing TCP segments with SYN set to
	// synWriter, which writes them after WritePackets has returned (see
	// WritePackets). Closed by Attach(nil).
	syns chan []byte
}

var _ gvstack.LinkEndpoint = (*tapLink)(nil)

func newTapLink(f *os.File, mtu uint32, addr tcpip.LinkAddress, vnetHdr bool, onError func(error)) (*tapLink, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("stack: raw tap fd: %w", err)
	}
	return &tapLink{file: f, raw: raw, mtu: mtu, addr: addr, vnetHdr: vnetHdr, onError: onError}, nil
}

// MTU implements gvstack.LinkEndpoint.
func (l *tapLink) MTU() uint32 { return l.mtu }

// SetMTU implements gvstack.LinkEndpoint.
func (l *tapLink) SetMTU(mtu uint32) { l.mtu = mtu }

// MaxHeaderLength implements gvstack.LinkEndpoint: ethernet.New adds its own.
func (*tapLink) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements gvstack.LinkEndpoint.
func (l *tapLink) LinkAddress() tcpip.LinkAddress { return l.addr }

// SetLinkAddress implements gvstack.LinkEndpoint.
func (l *tapLink) SetLinkAddress(a tcpip.LinkAddress) { l.addr = a }

// Capabilities implements gvstack.LinkEndpoint. With vnet headers the
// kernel leaves TCP and UDP checksums partial (CHECKSUM_PARTIAL: only the
// pseudo-header sum is filled in), so they cannot be verified; the frames
// come from the namespace's kernel through memory, never a wire, and a
// frame crafted with a bad checksum only harms its sender's own flow.
func (l *tapLink) Capabilities() gvstack.LinkEndpointCapabilities {
	if l.vnetHdr {
		return gvstack.CapabilityRXChecksumOffload
	}
	return 0
}

// ARPHardwareType implements gvstack.LinkEndpoint (ethernet.New overrides it).
func (*tapLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements gvstack.LinkEndpoint: there is no header of our own.
func (*tapLink) AddHeader(*gvstack.PacketBuffer) {}

// ParseHeader implements gvstack.LinkEndpoint.
func (*tapLink) ParseHeader(*gvstack.PacketBuffer) bool { return true }

// Close implements gvstack.LinkEndpoint. The fd belongs to the Stack.
func (*tapLink) Close() {}

// SetOnCloseAction implements gvstack.LinkEndpoint.
func (*tapLink) SetOnCloseAction(func()) {}

// IsAttached implements gvstack.LinkEndpoint.
func (l *tapLink) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}

// Attach implements gvstack.LinkEndpoint: a dispatcher starts the reader,
// nil stops it and waits for it.
func (l *tapLink) Attach(d gvstack.NetworkDispatcher) {
	l.mu.Lock()
	if d == nil {
		if l.dispatcher == nil {
			l.mu.Unlock()
			return
		}
		l.dispatcher = nil
		l.stopping = true
		syns := l.syns
		l.syns = nil
		l.mu.Unlock()
		close(syns)
		l.file.SetReadDeadline(time.Unix(1, 0))
		l.wg.Wait()
		return
	}
	defer l.mu.Unlock()
	if l.dispatcher != nil || l.stopping {
		return
	}
	l.dispatcher = d
	syns := make(chan []byte, synQueueLen)
	l.syns = syns
	l.wg.Go(func() { l.readLoop(d) })
	l.wg.Go(func() { l.synWriter(syns) })
}

// Wait implements gvstack.LinkEndpoint.
func (l *tapLink) Wait() { l.wg.Wait() }

// readLoop delivers every frame read from the tap until Attach(nil) or a
// read error.
func (l *tapLink) readLoop(d gvstack.NetworkDispatcher) {
	size := int(l.mtu) + header.EthernetMinimumSize
	if l.vnetHdr {
		// TSO: one frame may be a 64 KiB segment whatever the MTU.
		size = max(size, maxGSOFrame) + tap.VnetHdrLen
	}
	buf := make([]byte, size)
	for {
		n, err := l.file.Read(buf)
		if err != nil {
			l.mu.Lock()
			stopping := l.stopping
			l.mu.Unlock()
			if stopping || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if l.onError != nil {
				l.onError(err)
			}
			return
		}
		frame := buf[:n]
		if l.vnetHdr {
			// The header says how the frame was segmented and summed; the
			// stack takes any segment size and, with
			// CapabilityRXChecksumOffload, does not verify sums.
			if n < tap.VnetHdrLen {
				continue
			}
			frame = frame[tap.VnetHdrLen:]
		}
		if len(frame) == 0 {
			continue
		}
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{
			Payload: buffer.MakeWithData(frame),
		})
		d.DeliverNetworkPacket(0, pkt) // ethernet.New reads the type from the header
		pkt.DecRef()
	}
}

// synQueueLen bounds the SYN frames waiting for synWriter; beyond it they
// are written inline.
const synQueueLen = 256

// WritePackets implements gvstack.LinkEndpoint: one write(v) per frame,
// as a tap takes one frame per write.
//
// TCP segments with SYN set (our SYN-ACKs, and SYNs of DialTCP) are not
// written here but handed to synWriter. gVisor sends them while holding
// the new endpoint's mutex (listenContext.startHandshake, connect), and the
// guest kernel answers inside our write(2): its ACK, often with data, is
// on the tap before we return. The TCP processor goroutine that gets it
// finds the mutex taken, and re-queues and retries the endpoint in a
// loop (tcp/dispatcher.go) until the holder unlocks: a busy loop on one of
// our two Ps while the holder may be waiting for a P after its syscall.
// Measured (bench rr -mode crr, MTU 65520, 2 cores): the processor loop
// was 66% of usernet's CPU, p99 ≈ 7–13 ms; see the package benchmarks.
func (l *tapLink) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if isTCPSyn(pkt) && l.deferFrame(pkt) {
			n++
			continue
		}
		slices := pkt.AsSlices()
		if l.vnetHdr {
			hdr := vnetHeaderFor(pkt)
			slices = append([][]byte{hdr[:]}, slices...)
		}
		if err := l.writeFrame(slices); err != nil {
			if n == 0 {
				return 0, err
			}
			return n, nil
		}
		n++
	}
	return n, nil
}

// isTCPSyn reports whether pkt is a TCP segment with SYN set.
func isTCPSyn(pkt *gvstack.PacketBuffer) bool {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	th := pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return false
	}
	return header.TCP(th).Flags().Contains(header.TCPFlagSyn)
}

// deferFrame queues a copy of pkt for synWriter; false means it was not
// queued (link stopping, queue full) and the caller writes it.
func (l *tapLink) deferFrame(pkt *gvstack.PacketBuffer) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.syns == nil {
		return false
	}
	v := pkt.ToView()
	var frame []byte
	if l.vnetHdr {
		hdr := vnetHeaderFor(pkt)
		frame = append(frame, hdr[:]...)
	}
	frame = append(frame, v.AsSlice()...)
	v.Release()
	select {
	case l.syns <- frame:
		return true
	default:
		return false
	}
}

// synWriter writes the frames deferFrame queued until Attach(nil) closes
// the channel.
func (l *tapLink) synWriter(syns <-chan []byte) {
	for frame := range syns {
		l.writeFrame([][]byte{frame})
	}
}

func (l *tapLink) writeFrame(slices [][]byte) tcpip.Error {
	var werr error
	err := l.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), slices)
		return werr != unix.EAGAIN
	})
	if err != nil {
		return &tcpip.ErrClosedForSend{}
	}
	switch werr {
	case nil:
		return nil
	case unix.EIO, unix.EBADFD, unix.ENXIO:
		return &tcpip.ErrClosedForSend{}
	default:
		// A frame the kernel refuses (EINVAL for an oversized one, ...)
		// is lost as on a wire; TCP retransmits.
		return &tcpip.ErrAborted{}
	}
}

// pollable returns a dup of f's fd in non-blocking mode, wrapped so that
// Go's poller serves it: os.File.Fd(), called by anyone before, puts a
// file into blocking mode for good, and then read deadlines do nothing.
func pollable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("stack: tap fd: %w", err)
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("stack: tap fd: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("stack: dup tap fd: %w", derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("stack: tap fd non-blocking: %w", err)
	}
	return os.NewFile(uintptr(nfd), "tap"), nil
}
