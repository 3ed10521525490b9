package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usernet/usernet/policy"
	"golang.org/x/sys/unix"
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
	mac tcpip.LinkAddress // guarded by mu; the guest's, for replies
}

type pingTable struct {
	mu     sync.Mutex
	flows  map[pingKey]*pingFlow // guarded by mu
	denied atomic.Bool           // logged that ping sockets are refused
}

// forwardPing is called on the inbound path with an ICMP(v6) echo request
// (the ICMP message, aliasing the packet) from src to dst.
func (s *Stack) forwardPing(src, dst netip.Addr, mac tcpip.LinkAddress, icmp []byte) {
	if mac == "" {
		return
	}
	hostDst, v := s.route(netip.AddrPortFrom(dst, 0))
	if v != forward {
		return // the virtual network, multicast, broadcast...: silence
	}
	if denied, _ := s.egressDenied(policy.ICMP, hostDst); denied {
		s.prohibitPing(src, dst, mac, icmp)
		return
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
	if len(msg) < header.ICMPv4MinimumSize { // the ICMPv6 echo header is as long
		return nil
	}
	if key.dst.Is4() {
		if header.ICMPv4(msg).Type() != header.ICMPv4EchoReply {
			return nil
		}
		reply := header.ICMPv4(append([]byte(nil), msg...))
		reply.SetIdent(key.id)
		reply.SetChecksum(header.ICMPv4Checksum(reply, 0)) // all but the checksum field
		return ipv4Packet(key.dst, key.src, header.ICMPv4ProtocolNumber, reply)
	}
	if header.ICMPv6(msg).Type() != header.ICMPv6EchoReply {
		return nil
	}
	reply := header.ICMPv6(append([]byte(nil), msg...))
	reply.SetIdent(key.id)
	reply.SetChecksum(icmpv6Checksum(key.dst, key.src, reply))
	return ipv6Packet(key.dst, key.src, header.ICMPv6ProtocolNumber, 64, reply)
}
