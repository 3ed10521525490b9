package link

import (
	"encoding/binary"

	"github.com/usernet/usernet/tap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// WritePartial writes one whole Ethernet frame built outside gVisor (the
// stack's UDP reply fast path) whose transport checksum is partial, as
// CHECKSUM_PARTIAL is in the kernel: the 16-bit field at
// csumStart+csumOffset holds the pseudo-header sum, not complemented, and
// the sum of everything from csumStart on is still to be added. With
// virtio-net headers the kernel adds it (VIRTIO_NET_HDR_F_NEEDS_CSUM), or
// nobody does if the frame is delivered locally; without them it is done
// here, before the capture sees the frame.
//
// The frame is written inline, unless the writer goroutine has frames in
// hand: then a copy is queued behind them, so that a flow's frames keep
// their order. frame may be reused once WritePartial returns.
func (l *Tap) WritePartial(frame []byte, csumStart, csumOffset int) tcpip.Error {
	field := csumStart + csumOffset
	if csumStart < 0 || csumOffset < 0 || field+2 > len(frame) {
		return &tcpip.ErrInvalidOptionValue{}
	}
	l.mu.Lock()
	tx := l.tx
	l.mu.Unlock()
	if tx != nil && tx.busy() {
		completeChecksum(frame, csumStart, field)
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		defer pkt.DecRef()
		if tx.offer(pkt, true) {
			return nil
		}
		return l.writePacket(pkt)
	}
	if !l.vnetHdr {
		completeChecksum(frame, csumStart, field)
		if cb := l.capture.Load(); cb != nil {
			cb.c.WriteFrame(frame)
		}
		var iov [1][]byte
		iov[0] = frame
		return l.writeFrame(iov[:])
	}
	if cb := l.capture.Load(); cb != nil {
		cb.c.WriteFrame(frame)
	}
	var h [tap.VnetHdrLen]byte
	h[0] = vnetFlagNeedsCsum
	binary.LittleEndian.PutUint16(h[2:], uint16(field+2))    // hdr_len: what tun sets for a NEEDS_CSUM frame anyway
	binary.LittleEndian.PutUint16(h[6:], uint16(csumStart))  // csum_start
	binary.LittleEndian.PutUint16(h[8:], uint16(csumOffset)) // csum_offset
	var iov [2][]byte
	iov[0], iov[1] = h[:], frame
	return l.writeFrame(iov[:])
}

// completeChecksum does what the kernel does for a CHECKSUM_PARTIAL
// packet (skb_checksum_help): it sums frame from start on (the field
// included, which holds the pseudo-header sum) and stores the complement
// at field, 0xffff for 0 (0 means "no checksum" to UDP).
func completeChecksum(frame []byte, start, field int) {
	sum := ^checksum.Checksum(frame[start:], 0)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(frame[field:], sum)
}

// GSO reports whether WriteTCP can send segments larger than the MTU: the
// tap has virtio-net headers and offloads.
func (l *Tap) GSO() bool { return l.vnetHdr }

// WriteTCP writes one TCP frame built outside gVisor (the stack's direct
// TCP path) from v, which it takes: Ethernet, IP and TCP headers (hdrLen
// bytes in all, the TCP header at csumStart, its checksum partial as for
// WritePartial), then the payload, which the kernel cuts into segments of
// mss bytes if it is longer (GSO; v6 picks TCPv6 segmentation). Only with
// virtio-net headers (GSO reports it). It goes as gVisor's frames go: a
// large one to the writer goroutine, so that the namespace's receive path
// (run inside our write) overlaps with the caller reading the next bytes
// from the host; a small one inline unless frames are queued.
func (l *Tap) WriteTCP(v *buffer.View, hdrLen, csumStart int, mss uint16, v6 bool) {
	pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	defer pkt.DecRef()
	if !l.vnetHdr || csumStart < header.EthernetMinimumSize || hdrLen < csumStart+header.TCPMinimumSize || hdrLen > pkt.Size() || mss == 0 {
		return
	}
	pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	pkt.NetworkHeader().Consume(csumStart - header.EthernetMinimumSize)
	pkt.TransportHeader().Consume(hdrLen - csumStart)
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	typ := gvstack.GSOTCPv4
	if v6 {
		typ = gvstack.GSOTCPv6
	}
	pkt.GSOOptions = gvstack.GSO{Type: typ, NeedsCsum: true, CsumOffset: 16, MSS: mss, L3HdrLen: uint16(csumStart - header.EthernetMinimumSize)}
	var pkts gvstack.PacketBufferList
	pkts.PushBack(pkt)
	// A frame the tap refuses is lost as on a wire.
	l.WritePackets(pkts)
}
