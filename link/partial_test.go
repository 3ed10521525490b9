package link

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/usernet/usernet/tap"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// partialUDPFrame is an Ethernet + IPv4 + UDP frame whose UDP checksum
// field holds the pseudo-header sum, as the stack's reply fast path makes
// it; it returns the frame, where the UDP header starts, and the frame
// with the checksum completed.
func partialUDPFrame(payload []byte) (frame []byte, udpAt int, full []byte) {
	udpAt = header.EthernetMinimumSize + header.IPv4MinimumSize
	frame = make([]byte, udpAt+header.UDPMinimumSize+len(payload))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x01", DstAddr: "\x02\x00\x00\x00\x00\x02", Type: header.IPv4ProtocolNumber})
	src, dst := header.IPv4(frame[14:]).SourceAddress(), header.IPv4(frame[14:]).DestinationAddress()
	header.IPv4(frame[14:]).Encode(&header.IPv4Fields{TotalLength: uint16(len(frame) - 14), TTL: 64, Protocol: uint8(header.UDPProtocolNumber)})
	udp := header.UDP(frame[udpAt:])
	udp.Encode(&header.UDPFields{SrcPort: 53, DstPort: 40000, Length: uint16(len(udp))})
	copy(udp.Payload(), payload)
	pseudo := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(udp)))
	udp.SetChecksum(pseudo)
	full = bytes.Clone(frame)
	fu := header.UDP(full[udpAt:])
	fu.SetChecksum(0)
	fu.SetChecksum(^checksum.Checksum(fu, pseudo))
	return frame, udpAt, full
}

// TestWritePartial: with virtio-net headers the frame goes out as it is
// with NEEDS_CSUM, csum_start and csum_offset set for the kernel; without,
// the checksum is completed first. Either way the capture sees the frame as
// written and the tx counters count it.
func TestWritePartial(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		l, peer := tapPair(t, vnet)
		rec := &recorder{}
		l.SetCapture(rec)
		frame, udpAt, full := partialUDPFrame([]byte("a reply of some length"))
		sent := bytes.Clone(frame)
		if err := l.WritePartial(frame, udpAt, 6); err != nil {
			t.Fatalf("vnet %v: WritePartial: %v", vnet, err)
		}
		buf := make([]byte, 4096)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if err != nil {
			t.Fatalf("vnet %v: read the frame: %v", vnet, err)
		}
		wire := buf[:n]
		want := full
		if vnet {
			var h [tap.VnetHdrLen]byte
			h[0] = vnetFlagNeedsCsum
			binary.LittleEndian.PutUint16(h[2:], uint16(udpAt+8))
			binary.LittleEndian.PutUint16(h[6:], uint16(udpAt))
			binary.LittleEndian.PutUint16(h[8:], 6)
			if !bytes.Equal(wire[:tap.VnetHdrLen], h[:]) {
				t.Errorf("vnet header % x, want % x", wire[:tap.VnetHdrLen], h[:])
			}
			wire = wire[tap.VnetHdrLen:]
			want = sent // the kernel completes the sum
		}
		if !bytes.Equal(wire, want) {
			t.Errorf("vnet %v: wrote\n% x\nwant\n% x", vnet, wire, want)
		}
		if got := rec.take(); len(got) != 1 || !bytes.Equal(got[0], want) {
			t.Errorf("vnet %v: captured %d frames, want the frame once", vnet, len(got))
		}
		if c := l.Counters(); c.TxFrames != 1 || c.TxBytes != uint64(len(want)) {
			t.Errorf("vnet %v: counters %+v, want 1 frame of %d bytes", vnet, c, len(want))
		}
	}
}

// TestWritePartialKeepsOrder: while the writer goroutine has frames in
// hand, a partial frame is queued behind them (its checksum completed,
// with an empty virtio-net header) instead of overtaking them.
func TestWritePartialKeepsOrder(t *testing.T) {
	l, peer := tapPair(t, true)
	d := make(chanDispatcher, 1)
	l.Attach(d)
	defer l.Attach(nil)
	// Bulk frames go to the writer; well more than the socket buffer
	// holds (the kernel doubles tapPair's 1 MiB, and 100 frames of 16 KiB
	// fitted at times), so that it is still writing when the partial
	// frame comes: nothing reads the peer until then.
	const bulk = 400
	var pkts gvstack.PacketBufferList
	for i := range bulk {
		pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(frameOf(asyncMinSize, byte(i)))})
		pkts.PushBack(pkt)
	}
	if n, err := l.WritePackets(pkts); n != bulk || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	pkts.DecRef()
	frame, udpAt, full := partialUDPFrame([]byte("after the bulk"))
	if err := l.WritePartial(frame, udpAt, 6); err != nil {
		t.Fatalf("WritePartial: %v", err)
	}
	buf := make([]byte, 2*asyncMinSize)
	for i := range bulk + 1 {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if err != nil {
			t.Fatalf("read frame #%d: %v", i, err)
		}
		wire := buf[tap.VnetHdrLen:n]
		if i < bulk {
			if !bytes.Equal(wire, frameOf(asyncMinSize, byte(i))) {
				t.Fatalf("frame #%d: %d bytes, not bulk frame #%d", i, len(wire), i)
			}
			continue
		}
		if !bytes.Equal(buf[:tap.VnetHdrLen], make([]byte, tap.VnetHdrLen)) || !bytes.Equal(wire, full) {
			t.Fatalf("last frame: vnet header % x, %d bytes; want an empty header and the completed frame", buf[:tap.VnetHdrLen], len(wire))
		}
	}
}

// TestWriteTCP: a large frame goes out whole with the TCP GSO type,
// gso_size and the partial checksum's place set (hdr_len the headers'
// length); one whose payload fits one segment goes with the partial
// checksum only. Both keep their order behind frames in the writer's
// hands, and the capture sees them as written.
func TestWriteTCP(t *testing.T) {
	l, peer := tapPair(t, true)
	d := make(chanDispatcher, 1)
	l.Attach(d)
	defer l.Attach(nil)
	rec := &recorder{}
	l.SetCapture(rec)
	const tcpAt = header.EthernetMinimumSize + header.IPv4MinimumSize
	const hdrLen = tcpAt + header.TCPMinimumSize
	frames := [][]byte{make([]byte, hdrLen+20*1000), make([]byte, hdrLen+900)}
	for i, f := range frames {
		for j := range f {
			f[j] = byte(i + j)
		}
		v := buffer.NewViewWithData(f)
		l.WriteTCP(v, hdrLen, tcpAt, 1000, false)
	}
	buf := make([]byte, 64<<10)
	for i, f := range frames {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if err != nil {
			t.Fatalf("read frame #%d: %v", i, err)
		}
		var h [tap.VnetHdrLen]byte
		h[0] = vnetFlagNeedsCsum
		binary.LittleEndian.PutUint16(h[2:], hdrLen)
		if i == 0 {
			h[1] = vnetGSOTCPv4
			binary.LittleEndian.PutUint16(h[4:], 1000)
		}
		binary.LittleEndian.PutUint16(h[6:], tcpAt)
		binary.LittleEndian.PutUint16(h[8:], 16)
		if !bytes.Equal(buf[:tap.VnetHdrLen], h[:]) {
			t.Errorf("frame #%d: vnet header % x, want % x", i, buf[:tap.VnetHdrLen], h[:])
		}
		if !bytes.Equal(buf[tap.VnetHdrLen:n], f) {
			t.Errorf("frame #%d: wrote %d bytes, want the %d-byte frame as it is", i, n-tap.VnetHdrLen, len(f))
		}
	}
	if got := rec.take(); len(got) != 2 || !bytes.Equal(got[0], frames[0]) || !bytes.Equal(got[1], frames[1]) {
		t.Errorf("captured %d frames, want both as written", len(got))
	}
}
