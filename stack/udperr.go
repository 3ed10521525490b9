package stack

import (
	"errors"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMP errors for UDP flows. A flow's host socket is not connected, so the
// kernel reports an ICMP error it receives for one of the socket's
// datagrams only with IP_RECVERR/IPV6_RECVERR: the next read fails (with
// ECONNREFUSED, EHOSTUNREACH, ...) and the error queue holds the details —
// the ICMP type and code, and the datagram's destination and payload. The
// flow turns each into an ICMP destination unreachable to the guest that
// quotes the guest's datagram, so that its socket sees the error as it
// would on a real network (a UDP send to a closed port: ECONNREFUSED on the
// next call), as slirp4netns does.

// setRecvErr asks the kernel to queue ICMP errors on a host UDP socket.
func setRecvErr(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
}

// isICMPError reports whether a read error of a host UDP socket may come
// from a queued ICMP error.
func isICMPError(err error) bool {
	for _, e := range []syscall.Errno{unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EACCES, unix.EPROTO, unix.EMSGSIZE} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// icmpError is one ICMP error the kernel queued for a host UDP socket.
type icmpError struct {
	dst     netip.AddrPort // the datagram's destination
	v6      bool           // ICMPv6
	typ     uint8
	code    uint8
	payload []byte // the start of the datagram's payload
}

// readErrQueue drains the socket's error queue; it returns the ICMP
// destination-unreachable errors in it (others, e.g. fragmentation needed,
// are dropped: the guest's MTU is ours, not the path's).
func readErrQueue(fd int) []icmpError {
	var out []icmpError
	buf := make([]byte, 512)
	oob := make([]byte, 512)
	for range 64 {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return out
		}
		e, ok := parseErrQueueMsg(buf[:n], oob[:oobn], from)
		if ok {
			out = append(out, e)
		}
	}
	return out
}

// parseErrQueueMsg decodes one MSG_ERRQUEUE message (payload, control
// data, msg_name); false for anything but ICMP destination unreachable.
func parseErrQueueMsg(payload, oob []byte, from unix.Sockaddr) (icmpError, bool) {
	e := icmpError{payload: append([]byte(nil), payload...)}
	switch sa := from.(type) {
	case *unix.SockaddrInet4:
		e.dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		e.dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	default:
		return e, false
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return e, false
	}
	for _, m := range msgs {
		v4 := m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR
		v6 := m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR
		if !v4 && !v6 || len(m.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
			continue
		}
		ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
		switch {
		case ee.Origin == unix.SO_EE_ORIGIN_ICMP && ee.Type == uint8(header.ICMPv4DstUnreachable) && ee.Code != uint8(header.ICMPv4FragmentationNeeded):
		case ee.Origin == unix.SO_EE_ORIGIN_ICMP6 && ee.Type == uint8(header.ICMPv6DstUnreachable):
			e.v6 = true
		default:
			return e, false
		}
		e.typ, e.code = ee.Type, ee.Code
		return e, true
	}
	return e, false
}

// icmpUnreachableFor builds the ICMP destination unreachable (e's code) that
// tells the guest at guestSrc that its datagram to visibleDst (the
// destination as the guest addressed it) failed: it comes from visibleDst
// and quotes the datagram's IP and UDP headers and what the kernel kept of
// its payload.
func icmpUnreachableFor(e icmpError, guestSrc, visibleDst netip.AddrPort) []byte {
	// The checksum stays 0 (none): we have only what the kernel kept of
	// the guest's datagram.
	udp := header.UDP(make([]byte, header.UDPMinimumSize+len(e.payload)))
	udp.Encode(&header.UDPFields{SrcPort: guestSrc.Port(), DstPort: visibleDst.Port(), Length: uint16(len(udp))})
	copy(udp.Payload(), e.payload)
	from, to := visibleDst.Addr(), guestSrc.Addr()
	var quote []byte
	if to.Is4() {
		quote = ipv4Packet(to, from, header.UDPProtocolNumber, udp)
	} else {
		quote = ipv6Packet(to, from, header.UDPProtocolNumber, 64, udp)
	}
	return dstUnreachable(from, to, e.code, quote)
}

// relayICMPError sends the guest at guestSrc the ICMP error for its datagram
// to visibleDst.
func (s *Stack) relayICMPError(e icmpError, guestSrc, visibleDst netip.AddrPort) {
	if e.v6 != guestSrc.Addr().Is6() {
		return
	}
	if mac := s.guestMAC(guestSrc.Addr()); mac != "" {
		s.queue(outPacket{mac: mac, proto: protoOf(guestSrc.Addr()), data: icmpUnreachableFor(e, guestSrc, visibleDst)})
	}
}

// guestMAC returns the link address of the guest's address a from gVisor's
// neighbor cache, or failing that (an IPv6 guest that reaches the outside
// through the router's link-local address never resolves us from its
// global address) the only link address the cache knows in either family;
// "" if there is none or more than one.
func (s *Stack) guestMAC(a netip.Addr) tcpip.LinkAddress {
	var only tcpip.LinkAddress
	for _, proto := range []tcpip.NetworkProtocolNumber{protoOf(a), header.IPv4ProtocolNumber, header.IPv6ProtocolNumber} {
		nb, err := s.gv.Neighbors(nicID, proto)
		if err != nil {
			continue
		}
		for _, n := range nb {
			switch {
			case n.LinkAddr == "":
			case n.Addr == tcpipAddr(a):
				return n.LinkAddr
			case only == "":
				only = n.LinkAddr
			case only != n.LinkAddr:
				return ""
			}
		}
	}
	return only
}
