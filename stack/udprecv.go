package stack

import (
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reading a port's host socket. unix.Recvfrom allocates the source
// address of every call, the ones that find nothing too, and a reader
// that takes one datagram per call needs a second call, failing with
// EAGAIN, before it may wait for the next: the two were a fifth of
// usernet's CPU in udp_flows once replies skipped gVisor. recvmmsg with
// room for two datagrams, into addresses kept for the reader's life, does
// both in one call: fewer than two back means the queue was empty, and
// the reader may wait for the poller.

// recvBatch is how many datagrams one recvmmsg takes at most.
const recvBatch = 2

// udpRecv is a port reader's recvmmsg state, reused for every call.
type udpRecv struct {
	hdrs  [recvBatch]unix.Mmsghdr
	iovs  [recvBatch]unix.Iovec
	names [recvBatch]unix.RawSockaddrInet6 // large enough for both families
	bufs  [recvBatch]*[]byte               // from datagramPool during a call
}

// readLoop hands every datagram the socket receives to fn, in a buffer of
// datagramPool behind replyHeadroom bytes of room (buf is the datagram
// after the room), with its source, until a read fails: it returns that
// error (a queued ICMP error: see isICMPError), or the socket's closing.
//
// The datagrams are handled inside one RawConn.Read: a call that took
// fewer than recvBatch returns to the poller's wait directly, which
// returns at once if a datagram came in meanwhile. A new Read would first
// forget that wake-up (the poller's readiness is reset as it starts).
//
// A datagram and an ICMP error that arrive together: the kernel keeps the
// error that ended the batch for the socket's next read, which then comes
// with its next wake-up rather than at once.
func (h *udpHost) readLoop(r *udpRecv, fn func(buf []byte, from netip.AddrPort)) error {
	var rerr unix.Errno
	err := h.rc.Read(func(fd uintptr) bool {
		for {
			n, drained, e := r.recv(fd)
			switch e {
			case 0:
			case unix.EAGAIN:
				return false // wait for the poller
			case unix.EINTR:
				continue
			default:
				rerr = e
				return true
			}
			for i := range n {
				fn((*r.bufs[i])[:replyHeadroom+int(r.hdrs[i].Len)], addrPortOfRaw(&r.names[i]))
			}
			r.release()
			if drained {
				return false // the queue was empty: wait for the poller
			}
		}
	})
	if err != nil {
		return err
	}
	return os.NewSyscallError("recvmmsg", rerr)
}

// recv is one recvmmsg into buffers of datagramPool; on an error they are
// given back already. drained: fewer than recvBatch came, so the queue
// was empty.
//
// Where recvmmsg is refused (a seccomp filter of someone else's that
// knows only recvfrom), recvfrom takes one datagram at a time, and only
// EAGAIN says the queue is empty.
func (r *udpRecv) recv(fd uintptr) (n int, drained bool, _ unix.Errno) {
	for i := range r.bufs {
		bp := datagramPool.Get().(*[]byte)
		r.bufs[i] = bp
		r.iovs[i].Base = &(*bp)[replyHeadroom]
		r.iovs[i].SetLen(maxDatagram)
		hdr := &r.hdrs[i].Hdr
		hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		hdr.Namelen = unix.SizeofSockaddrInet6
		hdr.Iov = &r.iovs[i]
		hdr.SetIovlen(1)
		hdr.Control, hdr.Controllen, hdr.Flags = nil, 0, 0
	}
	if !noRecvmmsg.Load() {
		got, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), recvBatch, unix.MSG_DONTWAIT, 0, 0)
		if e != unix.ENOSYS && e != unix.EPERM {
			if e != 0 {
				r.release()
				return 0, false, e
			}
			return int(got), int(got) < recvBatch, 0
		}
		noRecvmmsg.Store(true)
	}
	hdr := &r.hdrs[0]
	got, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(r.iovs[0].Base)), uintptr(r.iovs[0].Len),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(hdr.Hdr.Name)), uintptr(unsafe.Pointer(&hdr.Hdr.Namelen)))
	if e != 0 {
		r.release()
		return 0, false, e
	}
	hdr.Len = uint32(got)
	return 1, false, 0
}

// noRecvmmsg: recvmmsg was refused once; every reader uses recvfrom.
var noRecvmmsg atomic.Bool

// release gives the call's buffers back.
func (r *udpRecv) release() {
	for i := range r.bufs {
		if r.bufs[i] != nil {
			datagramPool.Put(r.bufs[i])
			r.bufs[i] = nil
		}
		r.iovs[i].Base = nil
	}
}

// addrPortOfRaw converts a received datagram's source.
func addrPortOfRaw(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), ntohs(a.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// ntohs reads a port as the kernel stores it, in network order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
