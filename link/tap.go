package link

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usernet/usernet/tap"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Tap is the link endpoint on the tap fd. It moves whole Ethernet
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
type Tap struct {
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

	// capture, if set (SetCapture, at any time), is told every frame; none
	// costs the data path one atomic load per frame.
	capture atomic.Pointer[captureBox]

	mu         sync.Mutex
	dispatcher gvstack.NetworkDispatcher // guarded by mu
	stopping   bool                      // guarded by mu
	wg         sync.WaitGroup            // the reader and the tx writer

	// tx holds the frames WritePackets defers to the writer goroutine
	// (txqueue.go); nil until Attach starts the writer.
	tx *txQueue // guarded by mu

	// Frames and bytes (with vnet headers, without them) each way: from
	// the namespace (rx) and to it (tx). Always on: an uncontended atomic
	// add per frame.
	rxFrames, rxBytes, txFrames, txBytes atomic.Uint64

	// writer is writeFrame's rawIO, taken while a write uses it: frames
	// are written inline by any goroutine that sends, and by the writer
	// goroutine.
	writer atomic.Pointer[rawIO]
}

// Counters are a Tap's frame and byte counts.
type Counters struct {
	RxFrames uint64 `json:"rx_frames"` // from the namespace
	RxBytes  uint64 `json:"rx_bytes"`
	TxFrames uint64 `json:"tx_frames"` // to the namespace
	TxBytes  uint64 `json:"tx_bytes"`
}

// Counters returns the counts so far.
func (l *Tap) Counters() Counters {
	return Counters{l.rxFrames.Load(), l.rxBytes.Load(), l.txFrames.Load(), l.txBytes.Load()}
}

var _ gvstack.LinkEndpoint = (*Tap)(nil)

func New(f *os.File, mtu uint32, addr tcpip.LinkAddress, vnetHdr bool, onError func(error)) (*Tap, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("link: raw tap fd: %w", err)
	}
	return &Tap{file: f, raw: raw, mtu: mtu, addr: addr, vnetHdr: vnetHdr, onError: onError}, nil
}

// Capture receives every frame read from and written to the tap, as the
// Ethernet frame it is on the tap (without the virtio-net header): with
// offloads, a TCP segment of up to 64 KiB with a partial checksum, as the
// kernel hands it over or takes it. parts are the pieces the frame was
// read or written in, one frame in all; they are only valid during the
// call. It is called from the reader and from any writer goroutine at
// once, before the frame is handed up or written.
type Capture interface {
	WriteFrame(parts ...[]byte)
}

// SetCapture sets c to be told every frame from now on (nil: none). It
// may be called at any time; a frame being handled as it is called may
// still go to the previous capture.
func (l *Tap) SetCapture(c Capture) {
	if c == nil {
		l.capture.Store(nil)
		return
	}
	l.capture.Store(&captureBox{c})
}

// captureBox lets an interface value sit behind an atomic pointer.
type captureBox struct{ c Capture }

// MTU implements gvstack.LinkEndpoint.
func (l *Tap) MTU() uint32 { return l.mtu }

// SetMTU implements gvstack.LinkEndpoint.
func (l *Tap) SetMTU(mtu uint32) { l.mtu = mtu }

// MaxHeaderLength implements gvstack.LinkEndpoint: ethernet.New adds its own.
func (*Tap) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements gvstack.LinkEndpoint.
func (l *Tap) LinkAddress() tcpip.LinkAddress { return l.addr }

// SetLinkAddress implements gvstack.LinkEndpoint.
func (l *Tap) SetLinkAddress(a tcpip.LinkAddress) { l.addr = a }

// Capabilities implements gvstack.LinkEndpoint. With vnet headers the
// kernel leaves TCP and UDP checksums partial (CHECKSUM_PARTIAL: only the
// pseudo-header sum is filled in), so they cannot be verified; the frames
// come from the namespace's kernel through memory, never a wire, and a
// frame crafted with a bad checksum only harms its sender's own flow.
func (l *Tap) Capabilities() gvstack.LinkEndpointCapabilities {
	if l.vnetHdr {
		return gvstack.CapabilityRXChecksumOffload
	}
	return 0
}

// ARPHardwareType implements gvstack.LinkEndpoint (ethernet.New overrides it).
func (*Tap) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements gvstack.LinkEndpoint: there is no header of our own.
func (*Tap) AddHeader(*gvstack.PacketBuffer) {}

// ParseHeader implements gvstack.LinkEndpoint.
func (*Tap) ParseHeader(*gvstack.PacketBuffer) bool { return true }

// Close implements gvstack.LinkEndpoint. The fd belongs to the Stack.
func (*Tap) Close() {}

// SetOnCloseAction implements gvstack.LinkEndpoint.
func (*Tap) SetOnCloseAction(func()) {}

// IsAttached implements gvstack.LinkEndpoint.
func (l *Tap) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}

// Attach implements gvstack.LinkEndpoint: a dispatcher starts the reader,
// nil stops it and waits for it.
func (l *Tap) Attach(d gvstack.NetworkDispatcher) {
	l.mu.Lock()
	if d == nil {
		if l.dispatcher == nil {
			l.mu.Unlock()
			return
		}
		l.dispatcher = nil
		l.stopping = true
		tx := l.tx
		l.tx = nil
		l.mu.Unlock()
		tx.stop()
		l.file.SetReadDeadline(time.Unix(1, 0))
		l.wg.Wait()
		return
	}
	defer l.mu.Unlock()
	if l.dispatcher != nil || l.stopping {
		return
	}
	l.dispatcher = d
	tx := newTxQueue()
	l.tx = tx
	l.wg.Go(func() { l.readLoop(d) })
	l.wg.Go(func() { tx.run(l.writePacket) })
}

// Wait implements gvstack.LinkEndpoint.
func (l *Tap) Wait() { l.wg.Wait() }

// readLoop delivers every frame read from the tap until Attach(nil) or a
// read error.
//
// Each frame is read with one readv into the (vnet header and) first
// headSplit bytes of a reused array and the rest straight into a pooled
// gVisor view, which becomes the packet's second chunk: the payload of a
// 64 KiB segment is never copied in user space (the view is kept for the
// next read when the frame fits in the head or is small enough to copy). Two chunks also keep the
// headers apart from the payload; see frameBuffer for why that matters.
func (l *Tap) readLoop(d gvstack.NetworkDispatcher) {
	size := int(l.mtu) + header.EthernetMinimumSize
	hdrLen := 0
	if l.vnetHdr {
		// TSO: one frame may be a 64 KiB segment whatever the MTU.
		size = max(size, maxGSOFrame)
		hdrLen = tap.VnetHdrLen
	}
	head := make([]byte, hdrLen+headSplit)
	bodyCap := max(size-headSplit, 1)
	var body *buffer.View
	var iov [2][]byte // readv's: allocated once, not per read
	rd := newRawIO(unix.Readv)
	var parts [2][]byte // the frame for capture, kept off the heap per read
	defer func() {
		if body != nil {
			body.Release()
		}
	}()
	for {
		if body == nil {
			body = buffer.NewView(bodyCap)
			body.Grow(bodyCap)
		}
		n, err := l.readv(rd, &iov, head, body.AsSlice())
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
		// With vnet headers, the header says how the frame was segmented
		// and summed; the stack takes any segment size and, with
		// CapabilityRXChecksumOffload, does not verify sums.
		if n <= hdrLen {
			continue
		}
		l.rxFrames.Add(1)
		l.rxBytes.Add(uint64(n - hdrLen))
		if cb := l.capture.Load(); cb != nil {
			parts[0], parts[1] = head[hdrLen:min(n, len(head))], body.AsSlice()[:max(n-len(head), 0)]
			cb.c.WriteFrame(parts[:]...)
		}
		var payload buffer.Buffer
		if n <= len(head) {
			payload = buffer.MakeWithData(head[hdrLen:n])
		} else if rest := n - len(head); rest < bodyCap/2 {
			// Small for the view: copy it into a chunk of its own size and
			// keep the view. Handing over a 64 KiB chunk for a 1500-byte
			// frame would make every segment queued in gVisor (which counts
			// the payload, not the chunk) hold 40 times its size.
			payload = buffer.MakeWithData(head[hdrLen:])
			payload.Append(buffer.NewViewWithData(body.AsSlice()[:rest]))
		} else {
			payload = buffer.MakeWithData(head[hdrLen:])
			body.CapLength(rest)
			payload.Append(body)
			body = nil // the packet owns it now
		}
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: payload})
		d.DeliverNetworkPacket(0, pkt) // ethernet.New reads the type from the header
		pkt.DecRef()
	}
}

// readv reads one frame into head and then body (iov is the caller's
// scratch for the pair), through Go's poller (so
// that Attach(nil)'s read deadline stops it).
func (l *Tap) readv(rd *rawIO, iov *[2][]byte, head, body []byte) (int, error) {
	iov[0], iov[1] = head, body
	rd.iov = iov[:]
	err := l.raw.Read(rd.fn)
	n, rerr := rd.n, rd.err
	rd.iov, rd.err = nil, nil
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, rerr
	}
	if n == 0 {
		// As os.File.Read: nothing read is the end (a tap never
		// returns an empty frame; the test's socketpair does once its
		// peer is gone), not a frame to skip in a busy loop.
		return 0, io.EOF
	}
	return n, nil
}

// headSplit is where readLoop cuts a frame: the Ethernet, IP and TCP
// headers of nearly every packet fit before it (14 + 40 + 60 = 114 for
// IPv6 with the largest TCP header). The headers get a chunk of their own
// because gVisor's IPv4 input (ipv4.go HandlePacket) holds a view of the
// network header while it asks for it again, and a second view of a shared
// chunk makes buffer.PullUp clone the whole chunk: with one chunk per frame
// that was an allocation, a clear and a copy of up to 64 KiB per packet (6%
// of usernet's CPU in bulk ns→host, profiled); now it is 128 bytes.
const headSplit = 128

// asyncMinSize is the frame size from which WritePackets hands frames to
// the writer goroutine instead of writing them itself (see WritePackets).
// Request/response traffic stays below it and is written inline, with no
// goroutine hand-off; bulk segments (64 KiB with offloads or MTU 65520) go
// to the writer.
const asyncMinSize = 16 << 10

// WritePackets implements gvstack.LinkEndpoint: one write(v) per frame,
// as a tap takes one frame per write.
//
// Some frames are not written here but queued for the link's writer
// goroutine (txqueue.go), which writes them after WritePackets has
// returned:
//
//   - Pure ACKs (see deferredTCP).
//   - TCP segments with SYN set (our SYN-ACKs, and SYNs of DialTCP). gVisor
//     sends them while holding the new endpoint's mutex
//     (listenContext.startHandshake, connect), and the guest kernel answers
//     inside our write(2): its ACK, often with data, is on the tap before
//     we return. The TCP processor goroutine that gets it finds the mutex
//     taken, and re-queues and retries the endpoint in a loop
//     (tcp/dispatcher.go) until the holder unlocks: a busy loop on one of
//     our two Ps while the holder may be waiting for a P after its
//     syscall. Measured (bench rr -mode crr, MTU 65520, 2 cores): the
//     processor loop was 66% of usernet's CPU, p99 ≈ 7–13 ms.
//   - Frames of asyncMinSize or more. The same holds for bulk data (the
//     guest's ACK comes back while the sender holds the endpoint lock), and
//     writing a 64 KiB segment into the namespace is a quarter of the CPU
//     of a host→namespace transfer (the namespace's receive path runs in
//     our write): on the writer goroutine it overlaps with the copy
//     goroutine reading the next bytes from the host.
//   - Any frame while frames are queued or being written, so that a flow's
//     frames keep their order (a FIN never overtakes its data).
func (l *Tap) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	l.mu.Lock()
	tx := l.tx
	l.mu.Unlock()
	n := 0
	for _, pkt := range pkts.AsSlice() {
		deferIt := pkt.Size() >= asyncMinSize || deferredTCP(pkt)
		if tx != nil && tx.offer(pkt, deferIt) {
			n++
			continue
		}
		if err := l.writePacket(pkt); err != nil {
			if n == 0 {
				return 0, err
			}
			return n, nil
		}
		n++
	}
	return n, nil
}

// writePacket writes one frame, with its virtio-net header if the tap has
// them.
func (l *Tap) writePacket(pkt *gvstack.PacketBuffer) tcpip.Error {
	slices := pkt.AsSlices()
	if cb := l.capture.Load(); cb != nil {
		cb.c.WriteFrame(slices...)
	}
	if l.vnetHdr {
		hdr := vnetHeaderFor(pkt)
		slices = append([][]byte{hdr[:]}, slices...)
	}
	return l.writeFrame(slices)
}

// deferredTCP reports whether pkt is a TCP segment that WritePackets
// always hands to the writer: one with SYN set, or a pure ACK (no data, no
// other flag). gVisor acknowledges every batch of received data at once
// (connect.go handleSegmentsLocked, no delayed ACK) on the TCP processor
// goroutine, which has just woken the reader of that data: written inline,
// the ACK's write(2), with the namespace's kernel processing it inside,
// holds the P the reader is waiting for. An ACK is never urgent and never
// overtakes anything (the queue keeps order).
func deferredTCP(pkt *gvstack.PacketBuffer) bool {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	th := pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return false
	}
	flags := header.TCP(th).Flags()
	return flags.Contains(header.TCPFlagSyn) || (flags == header.TCPFlagAck && pkt.Data().Size() == 0)
}

func (l *Tap) writeFrame(slices [][]byte) tcpip.Error {
	w := l.writer.Swap(nil)
	if w == nil {
		w = newRawIO(unix.Writev) // another write is under way
	}
	w.iov = slices
	err := l.raw.Write(w.fn)
	n, werr := w.n, w.err
	w.iov, w.err = nil, nil
	l.writer.CompareAndSwap(nil, w)
	if err != nil {
		return &tcpip.ErrClosedForSend{}
	}
	switch werr {
	case nil:
		if l.vnetHdr {
			n -= tap.VnetHdrLen
		}
		l.txFrames.Add(1)
		l.txBytes.Add(uint64(n))
		return nil
	case unix.EIO, unix.EBADFD, unix.ENXIO:
		return &tcpip.ErrClosedForSend{}
	default:
		// A frame the kernel refuses (EINVAL for an oversized one, ...)
		// is lost as on a wire; TCP retransmits.
		return &tcpip.ErrAborted{}
	}
}

// rawIO is a vectored read or write through Go's poller (RawConn's Read
// or Write) whose callback is made once: a closure made per call, with the
// results it sets, costs three allocations per frame. Only one goroutine
// uses one at a time: the reader its own, a writer the Tap's writer (or
// a new one while another write holds it).
type rawIO struct {
	iov [][]byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

func newRawIO(op func(fd int, iov [][]byte) (int, error)) *rawIO {
	r := &rawIO{}
	r.fn = func(fd uintptr) bool {
		r.n, r.err = op(int(fd), r.iov)
		return r.err != unix.EAGAIN
	}
	return r
}

// Pollable returns a dup of f's fd in non-blocking mode, wrapped so that
// Go's poller serves it: os.File.Fd(), called by anyone before, puts a
// file into blocking mode for good, and then read deadlines do nothing.
func Pollable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("link: tap fd: %w", err)
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("link: tap fd: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("link: dup tap fd: %w", derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("link: tap fd non-blocking: %w", err)
	}
	return os.NewFile(uintptr(nfd), "tap"), nil
}
