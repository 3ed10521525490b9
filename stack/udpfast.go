package stack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The UDP fast path. Once a flow's host socket is open (serveUDP), the
// flow's later datagrams from the guest skip gVisor: the link filter,
// running on the tap reader, finds the flow by its addresses and writes
// the payload to the host socket itself. Through gVisor each datagram
// cost its UDP demultiplexing, a queue, a goroutine wake-up of the flow's
// reader and a copy; at 1 Gbit/s of 1400-byte datagrams (89k/s) the queue
// overflowed and most of them were dropped (bench udp_1g). Datagrams the
// fast path does not take (fragments, IPv6 with extension headers, the
// flow's first one, any that arrive before the host socket is ready) go
// through gVisor as before. Replies (host → guest) have a fast path of
// their own (udpreply.go).

// udpFastKey names a flow as the guest sees it.
type udpFastKey struct {
	src, dst netip.AddrPort // guest address, original destination
}

// udpFastFlow is a flow's host socket as the fast path writes to it, and
// its reply headers (udpreply.go).
type udpFastFlow struct {
	rc     syscall.RawConn
	to     unix.Sockaddr  // the flow's host destination
	extend func()         // the flow's idle timer: traffic seen
	out    *atomic.Uint64 // the flow's bytes to the host (flows.go)

	guest, visible netip.AddrPort // the flow as the guest sees it
	reply          atomic.Pointer[udpReply]
	closed         atomic.Bool // the flow ended: no more reply headers
}

// close stops the flow's fast replies.
func (f *udpFastFlow) close() {
	f.closed.Store(true)
	f.reply.Store(nil)
}

// udpFastTable maps flows to their host sockets.
type udpFastTable struct {
	n     atomic.Int64 // entries; 0 skips the lookup
	flows sync.Map     // udpFastKey → *udpFastFlow
}

func (t *udpFastTable) add(k udpFastKey, f *udpFastFlow) {
	if _, loaded := t.flows.Swap(k, f); !loaded {
		t.n.Add(1)
	}
}

// remove deletes k if it still maps to f (a new flow with the same key may
// have replaced it).
func (t *udpFastTable) remove(k udpFastKey, f *udpFastFlow) {
	if t.flows.CompareAndDelete(k, f) {
		t.n.Add(-1)
	}
}

// udpFastSend takes an unfragmented UDP datagram, IPv4 or IPv6 without
// extension headers (ihl is the IP header's length, total the packet's),
// for a flow in the table: it writes the payload to
// the flow's host socket and reports true. false means the stack handles
// the packet.
func (s *Stack) udpFastSend(pkt *gvstack.PacketBuffer, src, dst netip.Addr, ihl, total int) bool {
	if s.udpFast.n.Load() == 0 {
		return false
	}
	b := peek(pkt, ihl+header.UDPMinimumSize)
	if len(b) < ihl+header.UDPMinimumSize {
		return false
	}
	udp := header.UDP(b[ihl:])
	end := ihl + int(udp.Length())
	if int(udp.Length()) < header.UDPMinimumSize || end > total {
		return false // malformed: the stack counts and drops it
	}
	v, ok := s.udpFast.flows.Load(udpFastKey{
		src: netip.AddrPortFrom(src, udp.SourcePort()),
		dst: netip.AddrPortFrom(dst, udp.DestinationPort()),
	})
	if !ok {
		return false
	}
	f := v.(*udpFastFlow)
	bp := datagramPool.Get().(*[]byte)
	defer datagramPool.Put(bp)
	data := pkt.Data().ToBuffer() // a clone: references, no copy
	n := 0
	data.SubApply(ihl+header.UDPMinimumSize, end-ihl-header.UDPMinimumSize, func(v *buffer.View) {
		n += copy((*bp)[n:], v.AsSlice())
	})
	data.Release()
	// Never wait: a full socket buffer drops the datagram, as the kernel
	// would. Errors (ECONNREFUSED from an earlier ICMP error, a socket
	// closed just now) cost this datagram only, as in relayQueued.
	f.rc.Write(func(fd uintptr) bool {
		unix.Sendto(int(fd), (*bp)[:n], 0, f.to)
		return true
	})
	f.extend()
	f.out.Add(uint64(n))
	s.noteGuestMAC(f, pkt.LinkHeader().Slice())
	return true
}

// udpFastFlowOf returns the fast-path entry of a flow to hostDst: its host
// socket's raw conn and the sockaddr to send to; guest and visible are the
// flow's ends as the guest sees them.
func udpFastFlowOf(host *udpHost, hostDst, guest, visible netip.AddrPort, extend func(), out *atomic.Uint64) *udpFastFlow {
	f := &udpFastFlow{rc: host.rc, extend: extend, out: out, guest: guest, visible: visible}
	if a := hostDst.Addr(); a.Is4() {
		f.to = &unix.SockaddrInet4{Port: int(hostDst.Port()), Addr: a.As4()}
	} else {
		f.to = &unix.SockaddrInet6{Port: int(hostDst.Port()), Addr: a.As16()}
	}
	return f
}
