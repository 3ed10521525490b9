package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
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
	reqs   chan []byte // echo requests (ICMP messages) to send
	ctx    context.Context
	cancel context.CancelFunc // ends the flow (idle, evicted, shutdown)
	last   atomic.Int64       // traffic last seen, pingTable.now
	rec    *flowRec           // the flow in the live registry (flows.go)

	mu    sync.Mutex
	mac   tcpip.LinkAddress // guarded by mu; the guest's, for replies
	timer *time.Timer       // guarded by mu; set once by servePing
}

type pingTable struct {
	mu        sync.Mutex
	flows     map[pingKey]*pingFlow // guarded by mu
	fullUntil int64                 // no eviction search before; guarded by mu
	epoch     time.Time
	denied    atomic.Bool // logged that ping sockets are refused
}

func (t *pingTable) now() int64 { return int64(time.Since(t.epoch)) }

// admitLocked makes room for a new flow at Limits.PingFlows: it evicts the
// flow idle longest if that one has been idle for Config.evictIdle; false
// means the new flow is refused.
func (t *pingTable) admitLocked(limit int, evictIdle time.Duration) (ok bool, evicted *pingFlow) {
	if len(t.flows) < limit {
		return true, nil
	}
	now := t.now()
	if now < t.fullUntil {
		return false, nil
	}
	var oldK pingKey
	var old *pingFlow
	for k, f := range t.flows {
		if old == nil || f.last.Load() < old.last.Load() {
			oldK, old = k, f
		}
	}
	if old == nil || now-old.last.Load() < int64(evictIdle) {
		t.fullUntil = now + int64(evictBackoff)
		return false, nil
	}
	delete(t.flows, oldK)
	return true, old
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
	denied, rule := s.egressDenied(policy.ICMP, hostDst)
	if denied {
		s.prohibitPing(src, dst, mac, icmp)
		return
	}
	key := pingKey{src: src, dst: dst, id: binary.BigEndian.Uint16(icmp[4:])}

	s.ping.mu.Lock()
	f := s.ping.flows[key]
	if f == nil {
		ok, evicted := s.ping.admitLocked(s.cfg.Limits.PingFlows, s.cfg.evictIdle)
		if evicted != nil {
			evicted.cancel()
			s.refuse(EvictedPingFlows, 1)
		}
		if !ok {
			s.ping.mu.Unlock()
			s.refuse(RefusedPingFlows, 1)
			s.prohibitPing(src, dst, mac, icmp)
			return
		}
		if !s.flows.enter() {
			s.ping.mu.Unlock()
			return
		}
		f = &pingFlow{reqs: make(chan []byte, 16)}
		f.ctx, f.cancel = context.WithCancel(s.ctx)
		f.last.Store(s.ping.now())
		f.rec = s.trackFlow(policy.ICMP, netip.AddrPortFrom(src, key.id), netip.AddrPortFrom(dst, 0), hostDst, rule, f.cancel)
		s.ping.flows[key] = f
		go func() {
			defer s.flows.leave()
			s.servePing(key, f)
		}()
	}
	s.ping.mu.Unlock()

	f.last.Store(s.ping.now())
	f.mu.Lock()
	f.mac = mac
	f.mu.Unlock()
	select {
	case f.reqs <- append([]byte(nil), icmp...):
	default: // the host socket is backed up; ping tolerates loss
	}
}

// servePing owns one ping flow until it has been idle for pingIdle, is
// evicted, or the stack shuts down.
func (s *Stack) servePing(key pingKey, f *pingFlow) {
	defer func() {
		f.cancel()
		s.untrackFlow(f.rec)
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
	conn, err := s.dialHost(f.ctx, network, netip.AddrPortFrom(key.dst, 0))
	if err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			if !s.ping.denied.Swap(true) {
				s.logf("stack: ICMP echo to the outside is dropped: host ping sockets are not permitted (net.ipv4.ping_group_range): %v", err)
			}
		} else if f.ctx.Err() == nil {
			s.logf("stack: ping %v: %v", key.dst, err)
		}
		return
	}
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		conn.Close()
		return
	}

	stop := context.AfterFunc(f.ctx, func() { conn.Close() })
	defer stop()
	f.mu.Lock()
	f.timer = time.AfterFunc(s.cfg.pingIdle, func() { s.checkPingIdle(f) })
	f.mu.Unlock()
	defer f.timer.Stop()

	var wg sync.WaitGroup
	wg.Go(func() {
		defer f.cancel()
		for {
			err := recvPooled(rc, func(b []byte, _ unix.Sockaddr) {
				f.last.Store(s.ping.now())
				f.rec.in.Add(uint64(len(b)))
				f.mu.Lock()
				mac := f.mac
				f.mu.Unlock()
				if pkt := s.echoReply(key, b); pkt != nil {
					s.write(outPacket{mac: mac, proto: protoOf(key.src), data: pkt})
				}
			})
			if err != nil {
				if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) {
					continue // an ICMP error for an earlier request
				}
				return
			}
		}
	})
	for {
		select {
		case <-f.ctx.Done():
			conn.Close()
			wg.Wait()
			return
		case m := <-f.reqs:
			conn.Write(m)
			f.rec.out.Add(uint64(len(m)))
		}
	}
}

// checkPingIdle runs when a flow's timer fires: the flow ends if it has
// been quiet for pingIdle, else the timer waits for the rest (traffic
// costs an atomic store, not a timer reset).
func (s *Stack) checkPingIdle(f *pingFlow) {
	quiet := time.Duration(s.ping.now() - f.last.Load())
	if quiet >= s.cfg.pingIdle {
		f.cancel()
		return
	}
	f.mu.Lock()
	f.timer.Reset(s.cfg.pingIdle - quiet)
	f.mu.Unlock()
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
