package stack

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

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

	mu         sync.Mutex
	dispatcher gvstack.NetworkDispatcher // +checklocks:mu
	stopping   bool                      // +checklocks:mu
	wg         sync.WaitGroup            // the reader
}

var _ gvstack.LinkEndpoint = (*tapLink)(nil)

func newTapLink(f *os.File, mtu uint32, addr tcpip.LinkAddress, onError func(error)) (*tapLink, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("stack: raw tap fd: %w", err)
	}
	return &tapLink{file: f, raw: raw, mtu: mtu, addr: addr, onError: onError}, nil
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

// Capabilities implements gvstack.LinkEndpoint.
func (*tapLink) Capabilities() gvstack.LinkEndpointCapabilities { return 0 }

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
		l.mu.Unlock()
		l.file.SetReadDeadline(time.Unix(1, 0))
		l.wg.Wait()
		return
	}
	defer l.mu.Unlock()
	if l.dispatcher != nil || l.stopping {
		return
	}
	l.dispatcher = d
	l.wg.Go(func() { l.readLoop(d) })
}

// Wait implements gvstack.LinkEndpoint.
func (l *tapLink) Wait() { l.wg.Wait() }

// readLoop delivers every frame read from the tap until Attach(nil) or a
// read error.
func (l *tapLink) readLoop(d gvstack.NetworkDispatcher) {
	buf := make([]byte, int(l.mtu)+header.EthernetMinimumSize)
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
		if n == 0 {
			continue
		}
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{
			Payload: buffer.MakeWithData(buf[:n]),
		})
		d.DeliverNetworkPacket(0, pkt) // ethernet.New reads the type from the header
		pkt.DecRef()
	}
}

// WritePackets implements gvstack.LinkEndpoint: one write(v) per frame,
// as a tap takes one frame per write.
func (l *tapLink) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := l.writeFrame(pkt.AsSlices()); err != nil {
			if n == 0 {
				return 0, err
			}
			return n, nil
		}
		n++
	}
	return n, nil
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
