package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["udp-frames"] = helperUDPFrames
}

// UDPFramesResult is what udp-frames reports of the replies it saw on a packet socket.
type UDPFramesResult struct {
	Echoed  int      `json:"echoed"`  // queries answered with the same bytes
	Frames  int      `json:"frames"`  // reply frames seen on the packet socket
	Partial int      `json:"partial"` // of them, with a partial checksum (CHECKSUM_PARTIAL)
	Bad     []string `json:"bad"`     // what was wrong with the others
	Big     bool     `json:"big"`     // the large query was echoed
}

// helperUDPFrames sends N 64-byte queries, one at a time, from one socket to ADDR and then
// one of BIG bytes, and checks every reply frame the namespace's kernel received on a packet
// socket: an IPv4 header checksum that is valid, TTL or hop limit 64, DF set, and a UDP
// checksum that is either valid or, for a frame the kernel marks CHECKSUM_PARTIAL
// (TP_STATUS_CSUMNOTREADY: the tap's virtio-net header asked for NEEDS_CSUM), the
// pseudo-header sum the kernel completes from.
func helperUDPFrames(args []string) (any, error) {
	if err := argN(args, 3, "udp-frames ADDR N BIG"); err != nil {
		return nil, err
	}
	to, err := netip.ParseAddrPort(args[0])
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return nil, err
	}
	big, err := strconv.Atoi(args[2])
	if err != nil {
		return nil, err
	}
	ps, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(ps)
	if err := unix.SetsockoptInt(ps, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return nil, fmt.Errorf("PACKET_AUXDATA: %w", err)
	}
	if err := unix.SetsockoptTimeval(ps, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}); err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(ps, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var res UDPFramesResult
	buf := make([]byte, 65536)
	exchange := func(msg []byte) bool {
		for range 3 {
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(time.Second))
			m, err := c.Read(buf)
			if err == nil {
				return bytes.Equal(buf[:m], msg)
			}
		}
		return false
	}
	for i := range n {
		msg := bytes.Repeat([]byte{byte(i)}, 64)
		if exchange(msg) {
			res.Echoed++
		}
	}
	res.Big = exchange(bytes.Repeat([]byte("big "), big/4))

	oob := make([]byte, 256)
	for {
		m, oobn, _, from, err := unix.Recvmsg(ps, buf, oob, 0)
		if err != nil {
			break
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		partial := false
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range msgs {
				if cm.Header.Level == unix.SOL_PACKET && cm.Header.Type == unix.PACKET_AUXDATA && len(cm.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
					aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&cm.Data[0]))
					partial = aux.Status&unix.TP_STATUS_CSUMNOTREADY != 0
				}
			}
		}
		ok, isPartial, err := checkReplyFrame(buf[:m], to, partial)
		if !ok {
			continue
		}
		res.Frames++
		if isPartial {
			res.Partial++
		}
		if err != nil && len(res.Bad) < 10 {
			res.Bad = append(res.Bad, err.Error())
		}
	}
	return res, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// checkReplyFrame checks one frame if it is an unfragmented UDP datagram from from (ok);
// partial is the kernel's CHECKSUM_PARTIAL mark.
func checkReplyFrame(f []byte, from netip.AddrPort, partial bool) (ok, isPartial bool, err error) {
	if len(f) < 14 {
		return false, false, nil
	}
	p := f[14:]
	var src netip.Addr
	var udp []byte
	var sum uint32
	switch binary.BigEndian.Uint16(f[12:]) {
	case unix.ETH_P_IP:
		if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
			return false, false, nil
		}
		ihl := int(p[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(p[2:]))
		if total > len(p) || ihl < 20 || total < ihl+8 || binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
			return false, false, nil // a fragment
		}
		src = netip.AddrFrom4([4]byte(p[12:16]))
		udp = p[ihl:total]
		if src != from.Addr() || binary.BigEndian.Uint16(udp) != from.Port() {
			return false, false, nil
		}
		switch {
		case fold(sumBytes(p[:ihl], 0)) != 0xffff:
			return true, partial, errors.New("IPv4 header checksum not valid")
		case p[8] != 64:
			return true, partial, fmt.Errorf("TTL %d, want 64", p[8])
		case p[6]&0x40 == 0:
			return true, partial, errors.New("DF not set")
		}
		sum = sumBytes(p[12:20], 0)
	case unix.ETH_P_IPV6:
		if len(p) < 40 || p[0]>>4 != 6 || p[6] != unix.IPPROTO_UDP {
			return false, false, nil
		}
		plen := int(binary.BigEndian.Uint16(p[4:]))
		if 40+plen > len(p) || plen < 8 {
			return false, false, nil
		}
		src = netip.AddrFrom16([16]byte(p[8:24]))
		udp = p[40 : 40+plen]
		if src != from.Addr() || binary.BigEndian.Uint16(udp) != from.Port() {
			return false, false, nil
		}
		if p[7] != 64 {
			return true, partial, fmt.Errorf("hop limit %d, want 64", p[7])
		}
		sum = sumBytes(p[8:40], 0)
	default:
		return false, false, nil
	}
	sum += unix.IPPROTO_UDP + uint32(len(udp))
	if partial {
		if got, want := binary.BigEndian.Uint16(udp[6:]), fold(sum); got != want {
			return true, true, fmt.Errorf("partial UDP checksum %#04x, want the pseudo-header sum %#04x", got, want)
		}
		return true, true, nil
	}
	if binary.BigEndian.Uint16(udp[6:]) == 0 || fold(sumBytes(udp, sum)) != 0xffff {
		return true, false, fmt.Errorf("UDP checksum %#04x not valid", binary.BigEndian.Uint16(udp[6:]))
	}
	return true, false, nil
}

// sumBytes adds b as big-endian 16-bit words to sum (the Internet checksum, unfolded).
func sumBytes(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestUDPReplyFrames: the replies from a host UDP socket reach the namespace's kernel as
// well-formed frames (IPv4 and IPv6): header checksums, TTL or hop limit 64, DF, and UDP
// checksums that are valid or, marked CHECKSUM_PARTIAL by the tap's virtio-net header, the
// pseudo-header sum; most of them partial (the reply fast path's frames). A reply larger than
// the MTU still arrives (gVisor fragments it).
func TestUDPReplyFrames(t *testing.T) {
	setup(t)
	usernetOnly(t, "usernet's reply frames")
	t.Parallel()
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-ipv6"}})
	ctx := testContext(t, defaultTimeout)
	waitSLAAC(t, ctx, tg)
	for _, tc := range []struct{ name, listen, gw string }{
		{"ipv4", "127.0.0.1:0", "10.0.2.2"},
		{"ipv6", "[::1]:0", "fd00::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := listenUDP(t, tc.listen)
			udpEchoServer(t, pc)
			const queries = 40
			var res UDPFramesResult
			tg.helper(t, testContext(t, 60*time.Second), &res, "udp-frames", net.JoinHostPort(tc.gw, port(pc.LocalAddr())), strconv.Itoa(queries), "3000")
			t.Logf("%+v", res)
			if res.Echoed != queries || !res.Big {
				t.Errorf("echoed %d of %d queries, the large one: %v", res.Echoed, queries, res.Big)
			}
			if res.Frames < queries {
				t.Errorf("the packet socket saw %d reply frames, want at least %d", res.Frames, queries)
			}
			if len(res.Bad) != 0 {
				t.Errorf("bad reply frames: %q", res.Bad)
			}
			if res.Partial < queries-3 {
				t.Errorf("%d reply frames with a partial checksum, want all but the first few (the fast path's)", res.Partial)
			}
		})
	}
}
