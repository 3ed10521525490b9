package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMP echo to destinations outside the virtual network is forwarded
// through unprivileged host ping sockets (socket(AF_INET, SOCK_DGRAM,
// IPPROTO_ICMP), allowed by net.ipv4.ping_group_range), one per (guest
// address, destination, echo identifier). The kernel replaces the
// identifier with the socket's own; replies get the guest's back.

type pingKey struct {
	src, dst netip.Addr
	id       uint16
}

type pingFlow struct {
	reqs chan []byte // echo requests (ICMP messages) to send

	mu  sync.Mutex
	mac tcpip.LinkAddress // +checklocks:mu; the guest's, for replies
}

type pingTable struct {
	mu     sync.Mutex
	flows  map[pingKey]*pingFlow // +checklocks:mu
	denied atomic.Bool           // logged that ping sockets are refused
}

// forwardPing is called on the inbound path with an ICMP(v6) echo request
// (the ICMP message, aliasing the packet) from src to dst.
func (s *Stack) forwardPing(src, dst netip.Addr, mac tcpip.LinkAddress, icmp []byte) {
	if mac == "" {
		return
	}
	if _, v := s.route(netip.AddrPortFrom(dst, 0)); v != forward {
		return // the virtual network, multicast, broadcast...: silence
	}
	key := pingKey{src: src, dst: dst, id: binary.BigEndian.Uint16(icmp[4:])}
	msg := append([]byte(nil), icmp...)

	s.ping.mu.Lock()
	f := s.ping.flows[key]
	if f == nil {
		if !s.flows.enter() {
			s.ping.mu.Unlock()
			return
		}
		f = &pingFlow{reqs: make(chan []byte, 16)}
		s.ping.flows[key] = f
		go func() {
			defer s.flows.leave()
			s.servePing(key, f)
		}()
	}
	s.ping.mu.Unlock()

	f.mu.Lock()
	f.mac = mac
	f.mu.Unlock()
	select {
	case f.reqs <- msg:
	default: // the host socket is backed up; ping tolerates loss
	}
}

// servePing owns one ping flow until it has been idle for pingIdle or the
// stack shuts down.
func (s *Stack) servePing(key pingKey, f *pingFlow) {
	defer func() {
		s.ping.mu.Lock()
		if s.ping.flows[key] == f {
			delete(s.ping.flows, key)
		}
		s.ping.mu.Unlock()
	}()

	network := "ping4"
	if key.dst.Is6() {
		network = "ping6"
	}
	conn, err := s.dialHost(s.ctx, network, netip.AddrPortFrom(key.dst, 0))
	if err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			if !s.ping.denied.Swap(true) {
				s.logf("stack: ICMP echo to the outside is dropped: host ping sockets are not permitted (net.ipv4.ping_group_range): %v", err)
			}
		} else if s.ctx.Err() == nil {
			s.logf("stack: ping %v: %v", key.dst, err)
		}
		return
	}

	done := make(chan struct{})
	var once sync.Once
	closeConn := func() {
		once.Do(func() {
			close(done)
			conn.Close()
		})
	}
	stop := context.AfterFunc(s.ctx, closeConn)
	defer stop()
	timer := time.AfterFunc(s.cfg.pingIdle, closeConn)
	defer timer.Stop()

	var wg sync.WaitGroup
	wg.Go(func() {
		defer closeConn()
		buf := make([]byte, maxDatagram)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) {
					continue // an ICMP error for an earlier request
				}
				return
			}
			timer.Reset(s.cfg.pingIdle)
			f.mu.Lock()
			mac := f.mac
			f.mu.Unlock()
			if pkt := s.echoReply(key, buf[:n]); pkt != nil {
				s.write(outPacket{mac: mac, proto: protoOf(key.src), data: pkt})
			}
		}
	})
	for {
		select {
		case <-done:
			wg.Wait()
			return
		case m := <-f.reqs:
			timer.Reset(s.cfg.pingIdle)
			conn.Write(m)
		}
	}
}

// echoReply turns a reply read from a host ping socket (an ICMP message,
// no IP header) into the IP packet for the guest: from the original
// destination, with the guest's identifier. nil if it is not an echo
// reply.
func (s *Stack) echoReply(key pingKey, msg []byte) []byte {
	if len(msg) < 8 {
		return nil
	}
	msg = append([]byte(nil), msg...)
	binary.BigEndian.PutUint16(msg[4:], key.id)
	msg[2], msg[3] = 0, 0
	if key.dst.Is4() {
		if msg[0] != byte(header.ICMPv4EchoReply) {
			return nil
		}
		binary.BigEndian.PutUint16(msg[2:], fold(csum(0, msg)))
		return ipv4Packet(key.dst, key.src, header.ICMPv4ProtocolNumber, msg)
	}
	if msg[0] != byte(header.ICMPv6EchoReply) {
		return nil
	}
	binary.BigEndian.PutUint16(msg[2:], fold(csum(pseudo6(key.dst, key.src, header.ICMPv6ProtocolNumber, len(msg)), msg)))
	return ipv6Packet(key.dst, key.src, header.ICMPv6ProtocolNumber, 64, msg)
}

// netUnreachable builds ICMP destination unreachable, code net unreachable
// (ICMPv6: no route to destination), from the gateway to src, quoting orig
// (the offending IP packet).
func (s *Stack) netUnreachable(src netip.Addr, orig []byte) []byte {
	if src.Is4() {
		return dstUnreachable(s.gw4, src, uint8(header.ICMPv4NetUnreachable), orig)
	}
	from := s.gw6
	if src.IsLinkLocalUnicast() {
		from = s.router6
	}
	return dstUnreachable(from, src, uint8(header.ICMPv6NetworkUnreachable), orig)
}

// dstUnreachable builds an ICMP (ICMPv6 for IPv6 addresses) destination
// unreachable with code from from to to, quoting orig (the offending IP
// packet) as far as RFC 1812 / RFC 4443 allow.
func dstUnreachable(from, to netip.Addr, code uint8, orig []byte) []byte {
	if to.Is4() {
		orig = orig[:min(len(orig), 576-header.IPv4MinimumSize-header.ICMPv4MinimumSize)]
		msg := make([]byte, header.ICMPv4MinimumSize+len(orig))
		msg[0], msg[1] = byte(header.ICMPv4DstUnreachable), code
		copy(msg[8:], orig)
		binary.BigEndian.PutUint16(msg[2:], fold(csum(0, msg)))
		return ipv4Packet(from, to, header.ICMPv4ProtocolNumber, msg)
	}
	orig = orig[:min(len(orig), header.IPv6MinimumMTU-header.IPv6MinimumSize-header.ICMPv6MinimumSize-4)]
	msg := make([]byte, 8+len(orig))
	msg[0], msg[1] = byte(header.ICMPv6DstUnreachable), code
	copy(msg[8:], orig)
	binary.BigEndian.PutUint16(msg[2:], fold(csum(pseudo6(from, to, header.ICMPv6ProtocolNumber, len(msg)), msg)))
	return ipv6Packet(from, to, header.ICMPv6ProtocolNumber, 64, msg)
}

var ipv4ID atomic.Uint32

// ipv4Packet prepends a 20-byte IPv4 header to payload.
func ipv4Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	p := make([]byte, header.IPv4MinimumSize+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], uint16(ipv4ID.Add(1)))
	p[8] = 64 // TTL
	p[9] = byte(proto)
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], fold(csum(0, p[:header.IPv4MinimumSize])))
	copy(p[header.IPv4MinimumSize:], payload)
	return p
}

// ipv6Packet prepends a 40-byte IPv6 header to payload.
func ipv6Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, hopLimit uint8, payload []byte) []byte {
	p := make([]byte, header.IPv6MinimumSize+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6] = byte(proto)
	p[7] = hopLimit
	s16, d16 := src.As16(), dst.As16()
	copy(p[8:], s16[:])
	copy(p[24:], d16[:])
	copy(p[header.IPv6MinimumSize:], payload)
	return p
}

// csum adds b to a ones' complement sum.
func csum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// fold finishes a ones' complement sum into a checksum.
func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudo6 is the sum of the IPv6 pseudo-header.
func pseudo6(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, length int) uint32 {
	s16, d16 := src.As16(), dst.As16()
	sum := csum(0, s16[:])
	sum = csum(sum, d16[:])
	return sum + uint32(length>>16) + uint32(length&0xffff) + uint32(proto)
}

// outPacket is an IP packet for the guest at mac.
type outPacket struct {
	mac   tcpip.LinkAddress
	proto tcpip.NetworkProtocolNumber
	data  []byte
}

// queue hands p to the control goroutine; it drops p when the queue is
// full, which rate-limits the ICMP errors the link filter generates.
func (s *Stack) queue(p outPacket) {
	select {
	case s.ctl <- p:
	default:
	}
}

// write sends p to the guest. It must not be called on the inbound path
// (see queue): with an in-memory link the write is delivered inline.
func (s *Stack) write(p outPacket) {
	if err := s.gv.WritePacketToRemote(nicID, p.mac, p.proto, buffer.MakeWithData(p.data)); err != nil && s.ctx.Err() == nil {
		s.logf("stack: write to the namespace: %v", err)
	}
}

// dialPing opens a connected unprivileged ICMP echo socket to dst, bound
// to local if valid. Its Read and Write carry ICMP messages without the IP
// header; the kernel sets the identifier and the checksum.
func dialPing(dst, local netip.Addr) (net.Conn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if dst.Is6() {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w", err)
	}
	sa := func(a netip.Addr) unix.Sockaddr {
		if a.Is4() {
			return &unix.SockaddrInet4{Addr: a.As4()}
		}
		return &unix.SockaddrInet6{Addr: a.As16()}
	}
	if local.IsValid() {
		if err := unix.Bind(fd, sa(local)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("ping socket: bind %v: %w", local, err)
		}
	}
	if err := unix.Connect(fd, sa(dst)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ping socket: connect %v: %w", dst, err)
	}
	f := os.NewFile(uintptr(fd), "ping")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("ping socket: %w", err)
	}
	return c, nil
}
