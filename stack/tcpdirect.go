package stack

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/relay"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The direct TCP path (Config.DirectTCP): the guest's outbound TCP
// connections terminated by the link filter, without gVisor and without
// buffers of our own, as pasta does. A guest SYN becomes a non-blocking
// connect of a host socket; once it is connected, the guest gets the
// SYN-ACK. Guest data is written to the host socket as it arrives and only
// what the socket took is acknowledged (window 0 while the socket is
// full, a window update when it drains). Host data is peeked (SO_PEEK_OFF
// keeps the offset of what is in flight) and sent in segments within the
// guest's window; the guest's ACKs discard it from the socket (MSG_TRUNC);
// a timeout or three duplicate ACKs rewind to the first unacknowledged
// byte. One epoll goroutine of our own serves every host socket; guest
// segments are handled on the tap's reader goroutine.
//
// A SYN the direct path does not take (not forwarded by route, denied by
// the egress policy, or for an endpoint of gVisor's) goes on to gVisor,
// which answers it as before; so does every segment of no direct flow.

// directPath is the direct path's state: its flows and its epoll instance.
type directPath struct {
	s  *Stack
	ep *os.File // the epoll instance, non-blocking, in Go's poller
	rc syscall.RawConn

	mu     sync.Mutex
	conns  map[directKey]*directConn // guarded by mu
	byID   map[uint64]*directConn    // guarded by mu
	nextID uint64                    // guarded by mu
	closed bool                      // guarded by mu; run has ended

	bufs sync.Pool    // *[]byte of directBufSize, for host data peeked into frames
	held atomic.Int64 // bytes in every flow's out-of-order queue

	outqErr sync.Once // SIOCOUTQ failed: logged once

	running atomic.Bool // run has started; it closes ep
}

// testHookDirectSocket, if set, sees every host socket of the direct path
// before it connects.
var testHookDirectSocket func(fd int)

// directHeld is guest data held beyond a hole (directConn.ooo).
type directHeld struct {
	seq  uint32
	data []byte
}

// directKey is a flow as the guest sees it.
type directKey struct{ src, dst netip.AddrPort }

const (
	// directWindow bounds the receive window advertised to the guest.
	directWindow = 4 << 20
	// directWS is the window shift advertised to a guest that scales.
	directWS = 7
	// directBufSize and directMaxSegs bound the host data peeked at
	// once, in frames.
	directBufSize = 160 << 10
	directMaxSegs = 64
	// directHdrMax is the largest header of a data segment to the guest:
	// Ethernet, IPv6, TCP without options.
	directHdrMax = header.EthernetMinimumSize + header.IPv6MinimumSize + header.TCPMinimumSize
	// directRTO is the first retransmission timeout towards the guest;
	// directMaxRetries timeouts in a row reset the connection.
	directRTO        = 200 * time.Millisecond
	directMaxRTO     = 10 * time.Second
	directMaxRetries = 12
	// directHeldMax and directHeldTotal bound the guest data held beyond
	// holes, per flow and in all: memory the guest makes us spend.
	directHeldMax   = 1 << 20
	directHeldTotal = 32 << 20
)

func newDirectPath(s *Stack) (*directPath, error) {
	f, rc, err := relay.Epoll("direct-tcp-epoll")
	if err != nil {
		return nil, fmt.Errorf("direct tcp: %w", err)
	}
	d := &directPath{s: s, ep: f, rc: rc, conns: map[directKey]*directConn{}, byID: map[uint64]*directConn{}}
	d.bufs.New = func() any { b := make([]byte, directBufSize); return &b }
	return d, nil
}

// run serves the host sockets until the Stack's ctx ends, then resets
// every flow left. It runs on a goroutine of s.flows.
func (d *directPath) run() {
	d.running.Store(true)
	ctx := d.s.ctx
	stop := context.AfterFunc(ctx, func() { d.ep.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var evs [128]unix.EpollEvent
	ready := make([]*directConn, 0, len(evs))
	for ctx.Err() == nil {
		var n int
		var werr error
		err := d.rc.Read(func(fd uintptr) bool {
			for {
				n, werr = unix.EpollWait(int(fd), evs[:], 0)
				if werr != unix.EINTR {
					return werr != nil || n > 0
				}
			}
		})
		if ctx.Err() != nil {
			break
		}
		if err == nil {
			err = werr
		}
		if err != nil {
			d.s.logf("stack: direct tcp: epoll_wait: %v", err)
			break
		}
		d.mu.Lock()
		for _, ev := range evs[:n] {
			ready = append(ready, d.byID[idOfEvent(ev)])
		}
		d.mu.Unlock()
		for i, c := range ready {
			if c != nil {
				c.hostEvent(evs[i].Events)
			}
		}
		clear(ready)
		ready = ready[:0]
	}
	d.mu.Lock()
	d.closed = true
	left := make([]*directConn, 0, len(d.conns))
	for _, c := range d.conns {
		left = append(left, c)
	}
	d.mu.Unlock()
	for _, c := range left {
		c.kill()
	}
	d.ep.Close()
}

func idOfEvent(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// input takes a TCP segment from the guest (IP header of hl bytes, total
// bytes in all, not fragmented) and reports whether the direct path
// consumed it.
func (d *directPath) input(pkt *gvstack.PacketBuffer, src, dst netip.Addr, hl, total int) bool {
	if d.s.tapLink == nil {
		return false
	}
	b := peek(pkt, hl+header.TCPMinimumSize)
	if len(b) < hl+header.TCPMinimumSize || total < hl+header.TCPMinimumSize {
		return false
	}
	tcp := header.TCP(b[hl:])
	key := directKey{netip.AddrPortFrom(src, tcp.SourcePort()), netip.AddrPortFrom(dst, tcp.DestinationPort())}
	d.mu.Lock()
	c := d.conns[key]
	d.mu.Unlock()
	flags := tcp.Flags()
	if c == nil && (!flags.Contains(header.TCPFlagSyn) || flags.Intersects(header.TCPFlagAck|header.TCPFlagRst|header.TCPFlagFin)) {
		return false
	}
	off := int(tcp.DataOffset())
	if off < header.TCPMinimumSize || hl+off > total {
		return false // gVisor counts and drops it
	}
	// PullUp may move the bytes: tcp is read again from the new slice.
	b = peek(pkt, total)
	if len(b) < total {
		return false
	}
	tcp = header.TCP(b[hl:])
	seg := directSeg{
		flags:   flags,
		seq:     tcp.SequenceNumber(),
		ack:     tcp.AckNumber(),
		wnd:     tcp.WindowSize(),
		opts:    b[hl+header.TCPMinimumSize : hl+off],
		payload: b[hl+off : total],
	}
	if c != nil {
		c.guestSegment(&seg)
		return true
	}
	return d.takeSYN(pkt, key, &seg)
}

// directSeg is a segment from the guest; its slices are the frame's.
type directSeg struct {
	flags         header.TCPFlags
	seq, ack      uint32
	wnd           uint16
	opts, payload []byte
}

// takeSYN starts a direct flow for a guest SYN, or reports false to leave
// it to gVisor.
func (d *directPath) takeSYN(pkt *gvstack.PacketBuffer, key directKey, seg *directSeg) bool {
	s := d.s
	lmac := srcMAC(pkt)
	if len(lmac) != 6 || len(s.mac) != 6 || !replyable(key.src.Addr()) || !replyable(key.dst.Addr()) {
		return false
	}
	mac := [6]byte([]byte(lmac))
	hostDst, v := s.route(key.dst)
	if v != forward {
		return false
	}
	rule := 0
	if s.cfg.Egress != nil {
		// Denied: gVisor's forwarder counts and answers it.
		if ch := s.cfg.Egress.Check(policy.TCP, hostDst); !ch.Allow {
			return false
		} else {
			rule = ch.RuleID
		}
	}
	id := gvstack.TransportEndpointID{
		LocalPort: key.dst.Port(), LocalAddress: tcpipAddr(key.dst.Addr()),
		RemotePort: key.src.Port(), RemoteAddress: tcpipAddr(key.src.Addr()),
	}
	if s.gv.FindTransportEndpoint(protoOf(key.dst.Addr()), header.TCPProtocolNumber, id, nicID) != nil {
		return false // one of ours listens there (port forwarding's own endpoints)
	}
	if !s.flows.enter() {
		return false // shutting down: gVisor answers with a RST
	}
	a, ok := s.tcp.admit(s.ctx, key.src.Addr(), key.dst)
	if !ok {
		s.flows.leave()
		sendRSTForSYN(s, key, mac, seg.seq)
		return true
	}
	c := &directConn{
		d: d, key: key, hostDst: hostDst, rule: rule, a: a, fd: -1,
		guestISS: seg.seq, rcvNxt: seg.seq + 1,
		iss: rand.Uint32(),
	}
	c.sndUna, c.sndNxt, c.sndMax = c.iss+1, c.iss+1, c.iss+1
	c.hdr = newDirectHdr(s, key, mac)
	o := header.ParseSynOptions(seg.opts, false)
	c.mss = min(int(o.MSS), c.hdr.maxPayload)
	if c.mss < 64 {
		c.mss = 64
	}
	if o.WS >= 0 {
		c.sndWS, c.rcvWS, c.scaled = uint8(min(o.WS, 14)), directWS, true
	}
	c.sndWnd = uint32(seg.wnd) // unscaled in a SYN
	c.timer = time.AfterFunc(time.Hour, c.onTimer)
	c.timer.Stop()

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		s.tcp.done(a)
		s.flows.leave()
		return false
	}
	d.nextID++
	c.id = d.nextID
	d.conns[key] = c
	d.byID[c.id] = c
	d.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	// An eviction, or the Stack's end, before the guest completes the
	// handshake.
	c.stopAttempt = context.AfterFunc(a.ctx, c.kill)
	c.dialLocked()
	return true
}

// sendRSTForSYN refuses a SYN the direct path took but cannot serve.
func sendRSTForSYN(s *Stack, key directKey, mac [6]byte, seq uint32) {
	h := newDirectHdr(s, key, mac)
	h.control(s, 0, seq+1, header.TCPFlagRst|header.TCPFlagAck, 0, nil)
}

// connState is where a direct flow is.
type connState int

const (
	dialing     connState = iota // host connect under way
	synReceived                  // SYN-ACK sent
	established
	closed
)

// directConn is one direct flow. The tap's reader goroutine, the epoll
// goroutine and the timer take turns under mu.
type directConn struct {
	d       *directPath
	key     directKey
	hostDst netip.AddrPort
	rule    int
	a       *tcpAttempt
	id      uint64
	hdr     directHdr
	timer   *time.Timer

	mu          sync.Mutex
	state       connState
	fd          int // -1 once closed
	stopAttempt func() bool
	flow        *flowRec

	guestISS, iss uint32
	rcvNxt        uint32 // next byte expected from the guest
	sndUna        uint32 // first byte the guest has not acknowledged
	sndNxt        uint32 // next byte to send to the guest
	sndMax        uint32 // highest sndNxt so far
	sndWnd        uint32 // the guest's window, bytes
	sndWS, rcvWS  uint8
	scaled        bool
	mss           int

	writeBlocked bool // the host socket was full: window 0 until EPOLLOUT
	wantOut      bool // a small window was advertised: update it at EPOLLOUT
	sndbuf       int  // the host socket's SO_SNDBUF, as last read
	unacked      int  // guest bytes taken since the last ACK
	ackDelayed   bool // ackTimer will send the ACK unless a segment carries it
	ackTimer     *time.Timer
	overrun      bool // guest data beyond what the socket took was dropped
	hostEOF      bool
	hostEnd      uint32 // with hostEOF: the sequence number of our FIN
	finAcked     bool
	guestFin     bool // the guest's FIN is taken and the host socket shut
	dupAcks      int
	holeAcked    bool         // duplicate ACKs went for a hole at holeAt
	holeAt       uint32       // with holeAcked: rcvNxt then
	ooo          []directHeld // guest data beyond a hole, in sequence order
	oooBytes     int          // bytes in ooo
	limited      bool         // the last send stopped at the guest's window
	rdhup        bool         // the host peer has shut its side
	rto          time.Duration
	retries      int
}

// dialLocked opens and connects the host socket.
func (c *directConn) dialLocked() {
	s := c.d.s
	dst, err := s.toHost(c.a.ctx, "tcp", c.hostDst)
	if err != nil {
		c.dialFailedLocked(err)
		return
	}
	local := s.cfg.OutboundAddr6
	family := unix.AF_INET6
	if dst.Addr().Is4() {
		local, family = s.cfg.OutboundAddr.Unmap(), unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.dialFailedLocked(os.NewSyscallError("socket", err))
		return
	}
	if err := setupHostTCP(fd, local); err != nil {
		unix.Close(fd)
		c.dialFailedLocked(err)
		return
	}
	if testHookDirectSocket != nil {
		testHookDirectSocket(fd)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		unix.Close(fd)
		c.dialFailedLocked(fmt.Errorf("setsockopt SO_PEEK_OFF: %w", err))
		return
	}
	err = unix.Connect(fd, sockaddrOf(dst))
	switch err {
	case nil, unix.EINPROGRESS, unix.EINTR:
	default:
		unix.Close(fd)
		c.dialFailedLocked(os.NewSyscallError("connect", err))
		return
	}
	c.fd = fd
	if err := c.d.ctl(unix.EPOLL_CTL_ADD, fd, c.id); err != nil {
		c.dialFailedLocked(fmt.Errorf("epoll_ctl: %w", err))
		return
	}
	if _, perr := syscall.Getpeername(fd); perr == nil {
		c.connectedLocked()
		return
	}
	// On loopback a refusal, too, is over when connect(2) returns: answer
	// it now rather than hold a half-open slot until the epoll goroutine
	// runs (a flood of SYNs to a closed port would fill the table first).
	if n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && n != 0 {
		c.dialFailedLocked(os.NewSyscallError("connect", syscall.Errno(n)))
		return
	}
	c.state = dialing
	c.timer.Reset(s.cfg.DialTimeout)
}

func (d *directPath) ctl(op, fd int, id uint64) error {
	var cerr error
	err := d.rc.Control(func(epfd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
		cerr = unix.EpollCtl(int(epfd), op, fd, &ev)
	})
	if err != nil {
		return err
	}
	return cerr
}

// dialFailedLocked answers the guest's SYN as handleTCP does for a failed
// dial: ICMP for an unreachable host or network, else a RST.
func (c *directConn) dialFailedLocked(err error) {
	s := c.d.s
	s.hostErrors.Add(1)
	s.tcp.dialed(c.a)
	// Gone from the table before the guest hears: it may try again at once.
	c.freeLocked(false)
	code, ok := unreachableCode(err, c.key.dst.Addr().Is6())
	if !ok || !s.tcpUnreachable(c.key.src, c.key.dst, c.guestISS, code) {
		c.hdr.control(s, 0, c.guestISS+1, header.TCPFlagRst|header.TCPFlagAck, 0, nil)
	}
}

// connectedLocked answers the guest's SYN.
func (c *directConn) connectedLocked() {
	s := c.d.s
	s.tcp.dialed(c.a)
	c.state = synReceived
	c.sndbuf, _ = unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	c.sendSynAckLocked()
	c.timer.Reset(s.tcp.lim.TCPHandshakeTimeout)
}

func (c *directConn) sendSynAckLocked() {
	var opts [8]byte
	mss := uint16(min(c.hdr.maxPayload, 0xffff))
	opts[0], opts[1], opts[2], opts[3] = 2, 4, byte(mss>>8), byte(mss)
	n := 4
	if c.scaled {
		opts[4], opts[5], opts[6], opts[7] = 1, 3, 3, c.rcvWS // NOP, window scale
		n = 8
	}
	c.hdr.control(c.d.s, c.iss, c.rcvNxt, header.TCPFlagSyn|header.TCPFlagAck, windowField(directWindow, 0), opts[:n])
}

// hostEvent handles an epoll event of the host socket.
func (c *directConn) hostEvent(ev uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.rdhup = true
	}
	switch c.state {
	case dialing:
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if n, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || n != 0 {
			if err == nil {
				err = os.NewSyscallError("connect", syscall.Errno(n))
			}
			c.dialFailedLocked(err)
			return
		}
		if _, err := syscall.Getpeername(c.fd); err == nil {
			c.connectedLocked()
		}
	case synReceived:
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			if n, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); n != 0 {
				c.resetLocked(true)
			}
		}
	case established:
		if ev&unix.EPOLLERR != 0 {
			if n, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); n != 0 {
				c.resetLocked(true)
				return
			}
		}
		if ev&unix.EPOLLOUT != 0 && (c.writeBlocked || c.wantOut) {
			c.writeBlocked, c.wantOut = false, false
			c.drainLocked()
			c.sendAckLocked()
			if c.overrun {
				// The guest sent beyond what the socket took and waits
				// for its timeout: duplicate ACKs make it retransmit now.
				c.overrun = false
				c.sendAckLocked()
				c.sendAckLocked()
				c.sendAckLocked()
			}
		}
		c.sendMoreLocked()
		c.maybeDoneLocked()
	}
}

// guestSegment handles a segment of the flow from the guest.
func (c *directConn) guestSegment(seg *directSeg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.d.s
	switch c.state {
	case closed:
		return
	case dialing:
		if seg.flags.Contains(header.TCPFlagRst) {
			c.freeLocked(true)
		}
		return // a retransmitted SYN: the SYN-ACK comes once connected
	case synReceived:
		switch {
		case seg.flags.Contains(header.TCPFlagRst):
			if rstAcceptable(seg.seq, c.rcvNxt) {
				c.freeLocked(true)
			}
			return
		case seg.flags.Contains(header.TCPFlagSyn) && !seg.flags.Contains(header.TCPFlagAck):
			if seg.seq == c.guestISS {
				c.sendSynAckLocked()
			}
			return
		case !seg.flags.Contains(header.TCPFlagAck) || seg.ack != c.iss+1:
			return
		}
		c.stopAttempt()
		c.stopAttempt = nil
		s.tcp.established(c.a)
		c.state = established
		c.timer.Stop()
		c.flow = s.trackFlow(policy.TCP, c.key.src, c.key.dst, c.hostDst, c.rule, c.kill)
		// Host data that came before the handshake ended.
		defer c.sendMoreLocked()
	}
	if seg.flags.Contains(header.TCPFlagRst) {
		if rstAcceptable(seg.seq, c.rcvNxt) {
			c.freeLocked(true)
		} else if seqLE(c.rcvNxt, seg.seq) && seqLT(seg.seq, c.rcvNxt+c.rcvWindowLocked()) {
			c.sendAckLocked() // RFC 5961's challenge ACK
		}
		return
	}
	if seg.flags.Contains(header.TCPFlagSyn) {
		c.sendAckLocked()
		return
	}
	if !seg.flags.Contains(header.TCPFlagAck) {
		return
	}
	c.ackLocked(seg)
	if c.state == closed {
		return
	}
	fin := seg.flags.Contains(header.TCPFlagFin)
	if len(seg.payload) > 0 || fin {
		c.dataLocked(seg.seq, seg.payload, fin)
	}
	c.maybeDoneLocked()
}

// ackLocked takes the guest's acknowledgement and window.
func (c *directConn) ackLocked(seg *directSeg) {
	wnd := uint32(seg.wnd) << c.sndWS
	n, ok := ackedBytes(seg.ack, c.sndUna, c.sndMax, c.hostEOF, c.hostEnd)
	if !ok {
		if seg.ack == c.sndUna && len(seg.payload) == 0 && !seg.flags.Contains(header.TCPFlagFin) &&
			wnd == c.sndWnd && c.sndNxt != c.sndUna {
			c.dupAcks++
			if c.dupAcks == 3 {
				c.rewindLocked()
			}
		}
		opened := seqLT(c.sndUna+c.sndWnd, c.sndUna+wnd)
		c.sndWnd = wnd
		if opened && c.limited {
			c.sendMoreLocked()
		}
		return
	}
	if n > 0 {
		// Discard what the guest has from the socket; the kernel moves
		// the peek offset back by as much.
		if _, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.fd), 0, uintptr(n), unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0); errno != 0 {
			c.resetLocked(true)
			return
		}
	}
	c.sndUna = seg.ack
	if seqLT(c.sndNxt, c.sndUna) {
		c.sndNxt = c.sndUna // acknowledged past a rewind
	}
	if c.hostEOF && c.sndUna == c.hostEnd+1 {
		c.finAcked = true
	}
	c.sndWnd = wnd
	c.dupAcks, c.retries, c.rto = 0, 0, 0
	if c.sndNxt == c.sndUna {
		c.timer.Stop()
	} else {
		c.timer.Reset(c.rtoLocked())
	}
	if c.limited {
		c.sendMoreLocked()
	}
}

// dataLocked writes the guest's data to the host socket.
func (c *directConn) dataLocked(seq uint32, data []byte, fin bool) {
	skip, ok := trimData(seq, c.rcvNxt, len(data))
	if !ok && !c.guestFin && seqLT(c.rcvNxt, seq) {
		c.beyondHoleLocked(seq, data)
		return
	}
	if !ok || c.guestFin {
		c.sendAckLocked()
		return
	}
	data = data[skip:]
	filled := len(c.ooo) > 0
	if len(data) > 0 {
		if !c.writeLocked(data) {
			return
		}
		if c.writeBlocked {
			fin = false
		} else if filled {
			c.drainLocked()
		}
	}
	if fin {
		c.dropHeldLocked() // nothing comes after a FIN
		unix.Shutdown(c.fd, unix.SHUT_WR)
		c.rcvNxt++
		c.guestFin = true
	}
	c.unacked += len(data)
	if delay := c.d.s.cfg.AckDelay; delay > 0 && !fin && !filled && !c.writeBlocked && c.unacked < 2*c.mss {
		// A small request: its answer may carry the ACK (as gVisor's
		// patched delayed ACK does on the other path).
		if !c.ackDelayed {
			c.ackDelayed = true
			if c.ackTimer == nil {
				c.ackTimer = time.AfterFunc(delay, c.onAckTimer)
			} else {
				c.ackTimer.Reset(delay)
			}
		}
		return
	}
	c.sendAckLocked()
}

// writeLocked writes data, which starts at rcvNxt, to the host socket and
// advances rcvNxt by what it took; what it did not take sets writeBlocked.
// It reports false if the flow was reset.
func (c *directConn) writeLocked(data []byte) bool {
	n, err := unix.SendmsgN(c.fd, data, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	switch {
	case err == unix.EAGAIN:
		n = 0
	case err != nil:
		c.resetLocked(true)
		return false
	}
	c.rcvNxt += uint32(n)
	c.flow.out.Add(uint64(n))
	if n < len(data) {
		c.writeBlocked, c.overrun = true, true
	} else {
		c.writeBlocked = false
	}
	return true
}

// beyondHoleLocked takes guest data that starts beyond rcvNxt: a segment
// before it was lost (the guest's tap queue drops frames when we read
// more slowly than it sends). It is held, within bounds, so that the
// retransmission of the hole alone moves everything on; the guest gets a
// duplicate ACK for it, as from any receiver. Without room to hold it,
// it is dropped, and the hole gets three duplicate ACKs at once rather
// than one per segment after it: a guest without SACK counts each
// duplicate as a segment that arrived and would not send again what we
// dropped until its retransmission timeout. A FIN beyond a hole is not
// held: the guest sends it again.
func (c *directConn) beyondHoleLocked(seq uint32, data []byte) {
	if len(data) > 0 && !c.writeBlocked && c.holdLocked(seq, data) {
		c.sendAckLocked()
		return
	}
	if !c.holeAcked || c.holeAt != c.rcvNxt {
		c.holeAcked, c.holeAt = true, c.rcvNxt
		c.sendAckLocked()
		c.sendAckLocked()
		c.sendAckLocked()
	}
}

// holdLocked keeps a copy of data at seq (beyond rcvNxt) in the flow's
// out-of-order queue, in sequence order, if the per-flow and the Stack's
// bounds allow, and reports whether it did.
func (c *directConn) holdLocked(seq uint32, data []byte) bool {
	if int32(seq+uint32(len(data))-c.rcvNxt) > directWindow {
		return false // beyond any window we offered
	}
	i := len(c.ooo)
	for i > 0 && seqLT(seq, c.ooo[i-1].seq) {
		i--
	}
	if i > 0 && c.ooo[i-1].seq == seq && len(c.ooo[i-1].data) >= len(data) {
		return true // a duplicate of what is held
	}
	if c.oooBytes+len(data) > directHeldMax {
		return false
	}
	if c.d.held.Add(int64(len(data))) > directHeldTotal {
		c.d.held.Add(-int64(len(data)))
		return false
	}
	c.oooBytes += len(data)
	c.ooo = append(c.ooo, directHeld{})
	copy(c.ooo[i+1:], c.ooo[i:])
	c.ooo[i] = directHeld{seq: seq, data: append([]byte(nil), data...)}
	return true
}

// drainLocked writes held data that rcvNxt has reached, until a hole or a
// full socket.
func (c *directConn) drainLocked() {
	for len(c.ooo) > 0 && !c.writeBlocked {
		h := &c.ooo[0]
		if seqLT(c.rcvNxt, h.seq) {
			return // the next hole
		}
		if skip, ok := trimData(h.seq, c.rcvNxt, len(h.data)); ok {
			before := c.rcvNxt
			if !c.writeLocked(h.data[skip:]) {
				return
			}
			if c.writeBlocked {
				// The rest waits in place for the socket to drain: the
				// guest sends it again, or the next drain finds it.
				took := skip + int(c.rcvNxt-before)
				c.releaseHeld(took)
				h.seq += uint32(took)
				h.data = h.data[took:]
				c.overrun = false // held, not lost: no duplicate ACKs needed
				return
			}
		}
		c.releaseHeld(len(h.data))
		c.ooo[0] = directHeld{}
		c.ooo = c.ooo[1:]
	}
	if len(c.ooo) == 0 {
		c.ooo = nil
	}
}

// releaseHeld gives n held bytes back to the bounds.
func (c *directConn) releaseHeld(n int) {
	c.oooBytes -= n
	c.d.held.Add(-int64(n))
}

// dropHeldLocked forgets everything held.
func (c *directConn) dropHeldLocked() {
	if c.oooBytes > 0 {
		c.releaseHeld(c.oooBytes)
	}
	c.ooo = nil
}

// onAckTimer sends a delayed ACK no answer carried.
func (c *directConn) onAckTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ackDelayed && c.state == established {
		c.sendAckLocked()
	}
}

// rcvWindowLocked is the window offered to the guest: the room in the
// host socket's send buffer (pasta's way), so that the guest never sends
// more than the socket takes. A guest that did (writeBlocked) gets 0
// until the socket drains.
func (c *directConn) rcvWindowLocked() uint32 {
	if c.writeBlocked || c.fd < 0 {
		return 0
	}
	limit := uint32(directWindow)
	if !c.scaled {
		limit = 0xffff
	}
	outq, err := unix.IoctlGetInt(c.fd, unix.SIOCOUTQ)
	if err != nil {
		// Without it the guest overruns the socket and recovers by
		// retransmission, slowly (a seccomp filter without ioctl did
		// this to bulk); say so once.
		c.d.outqErr.Do(func() {
			c.d.s.logf("stack: direct tcp: ioctl SIOCOUTQ: %v; the window offered ignores the host socket's queue", err)
		})
		return limit
	}
	// The kernel counts buffers with their overhead against SO_SNDBUF:
	// leave it an eighth.
	free := uint32(max(c.sndbuf-c.sndbuf/8-outq, 0))
	if free < limit/4 {
		// The kernel grows the buffer as the connection speeds up: look
		// again only when it seems tight.
		if b, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && b != c.sndbuf {
			c.sndbuf = b
			free = uint32(max(b-b/8-outq, 0))
		}
	}
	if free < uint32(c.sndbuf/8) && !c.wantOut {
		// A small window wants an update once the socket drains: EPOLLOUT
		// comes (edge-triggered) only after a poll found the socket not
		// writable, which re-arming makes epoll do. Below an eighth of the
		// buffer free the socket is never writable (poll wants a third
		// free), so the re-arm cannot report at once: a larger threshold
		// made every idle flow with a small buffer (any remote host at
		// first) loop on EPOLLOUT and window updates.
		c.wantOut = true
		c.d.ctl(unix.EPOLL_CTL_MOD, c.fd, c.id)
	}
	return min(free, limit)
}

func (c *directConn) sendAckLocked() {
	c.ackedLocked()
	c.hdr.control(c.d.s, c.sndNxt, c.rcvNxt, header.TCPFlagAck, windowField(c.rcvWindowLocked(), c.rcvWS), nil)
}

// ackedLocked notes that a segment about to go acknowledges all the
// guest has sent.
func (c *directConn) ackedLocked() {
	c.unacked = 0
	if c.ackDelayed {
		c.ackDelayed = false
		c.ackTimer.Stop()
	}
}

func (c *directConn) rtoLocked() time.Duration {
	if c.rto == 0 {
		c.rto = directRTO
	}
	return c.rto
}

// rewindLocked makes the next send start again at the first byte the
// guest has not acknowledged.
func (c *directConn) rewindLocked() {
	c.sndNxt = c.sndUna
	c.dupAcks = 0
	unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
}

// sendMoreLocked sends host data (and the FIN after it) within the
// guest's window.
func (c *directConn) sendMoreLocked() {
	c.limited = false
	if c.state != established || c.fd < 0 {
		return
	}
	// With GSO each frame is peeked into a buffer of gVisor's, which the
	// tap's writer goroutine takes (link.Tap.WriteTCP); without, into one
	// buffer of ours, written inline one segment at a time.
	gso := c.d.s.tapLink.GSO()
	var bp *[]byte
	var views [directMaxSegs]*buffer.View
	defer func() {
		if bp != nil {
			c.d.bufs.Put(bp)
		}
		for i, v := range views {
			if v != nil {
				v.Release()
				views[i] = nil
			}
		}
	}()
	var iov [directMaxSegs][]byte
	for {
		if c.hostEOF {
			if c.sndNxt == c.hostEnd {
				c.ackedLocked()
				c.sentLocked(1, false)
				c.hdr.control(c.d.s, c.hostEnd, c.rcvNxt, header.TCPFlagFin|header.TCPFlagAck, windowField(c.rcvWindowLocked(), c.rcvWS), nil)
			}
			if c.sndNxt == c.hostEnd+1 {
				return
			}
		}
		avail := int32(c.sndUna + c.sndWnd - c.sndNxt)
		if avail <= 0 {
			c.limited = true
			if c.sndNxt == c.sndUna {
				// The guest's window is closed and nothing is in flight:
				// probe it in case its window update is lost.
				c.timer.Reset(c.rtoLocked())
			}
			return
		}
		var buf []byte
		if !gso {
			if bp == nil {
				bp = c.d.bufs.Get().(*[]byte)
			}
			buf = *bp
		}
		// A frame's payload: one segment, or with GSO as many whole
		// segments as one frame takes.
		seg := c.mss
		if g := c.hdr.gsoPayload(c.mss); gso && g > c.mss {
			seg = g
		}
		slot := c.hdr.n + seg
		k, want := 0, 0
		for off := 0; off+slot <= directBufSize && want < int(avail) && k < len(iov); off += slot {
			m := min(seg, int(avail)-want)
			if gso {
				views[k] = buffer.NewViewSize(c.hdr.n + m)
				iov[k] = views[k].AsSlice()[c.hdr.n:]
			} else {
				iov[k] = buf[off+c.hdr.n : off+c.hdr.n+m]
			}
			want += m
			k++
		}
		n, _, _, _, err := unix.RecvmsgBuffers(c.fd, iov[:k], nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			c.resetLocked(true)
			return
		case n == 0:
			c.hostEOF, c.hostEnd = true, c.sndNxt
			continue
		}
		wnd := windowField(c.rcvWindowLocked(), c.rcvWS)
		c.ackedLocked()
		got := n
		for i, off := 0, 0; n > 0; i, off = i+1, off+slot {
			m := min(n, seg)
			seq := c.sndNxt
			c.sentLocked(uint32(m), true) // counted before the guest can see it
			switch {
			case gso:
				v := views[i]
				views[i] = nil
				v.CapLength(c.hdr.n + m)
				c.hdr.fill(v.AsSlice(), 0, seq, c.rcvNxt, header.TCPFlagAck|header.TCPFlagPsh, wnd)
				c.d.s.tapLink.WriteTCP(v, c.hdr.n, c.hdr.tcpAt, uint16(c.mss), c.hdr.v6)
			default: // one segment: without GSO seg is the MSS
				c.hdr.segment(c.d.s, buf[off:off+c.hdr.n+m], seq, c.rcvNxt, header.TCPFlagAck|header.TCPFlagPsh, wnd)
			}
			n -= m
		}
		for i, v := range views[:k] {
			if v != nil {
				v.Release()
				views[i] = nil
			}
		}
		if got < want && !c.rdhup {
			// All the socket had: the next data, or its end, comes
			// with an event.
			return
		}
	}
}

// sentLocked advances sndNxt by n sent (data, or the FIN) and keeps the
// timer running.
func (c *directConn) sentLocked(n uint32, data bool) {
	c.sndNxt += n
	if seqLT(c.sndMax, c.sndNxt) {
		if data {
			c.flow.in.Add(uint64(c.sndNxt - c.sndMax))
		}
		c.sndMax = c.sndNxt
	}
	c.timer.Reset(c.rtoLocked())
}

// onTimer is the flow's timer: the dial timeout, the handshake timeout,
// the retransmission timeout, or the probe of a closed window.
func (c *directConn) onTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.d.s
	switch c.state {
	case dialing:
		c.dialFailedLocked(context.DeadlineExceeded)
	case synReceived:
		s.refused.add(TCPHandshakeTimeout)
		c.resetLocked(true)
	case established:
		if c.sndNxt == c.sndUna && c.sndWnd != 0 {
			return
		}
		c.rto = min(c.rtoLocked()*2, directMaxRTO)
		if c.sndMax == c.sndUna {
			// A closed window: an out-of-window segment makes the guest
			// answer with its window. A guest may keep it closed as long
			// as it likes.
			c.hdr.control(s, c.sndUna-1, c.rcvNxt, header.TCPFlagAck, windowField(c.rcvWindowLocked(), c.rcvWS), nil)
			c.timer.Reset(c.rto)
			return
		}
		c.retries++
		if c.retries > directMaxRetries {
			c.resetLocked(true)
			return
		}
		c.rewindLocked()
		c.sendMoreLocked()
	}
}

// maybeDoneLocked ends a flow closed both ways.
func (c *directConn) maybeDoneLocked() {
	if c.state == established && c.guestFin && c.finAcked {
		c.freeLocked(false)
	}
}

// resetLocked ends the flow with a RST to the guest, and one to the host
// peer if rstHost.
func (c *directConn) resetLocked(rstHost bool) {
	if c.state == synReceived || c.state == established {
		// The guest expects a byte between sndUna and sndMax: it takes a
		// RST only at the one it expects.
		w := windowField(0, 0)
		c.hdr.control(c.d.s, c.sndMax, c.rcvNxt, header.TCPFlagRst|header.TCPFlagAck, w, nil)
		if c.sndUna != c.sndMax {
			c.hdr.control(c.d.s, c.sndUna, c.rcvNxt, header.TCPFlagRst|header.TCPFlagAck, w, nil)
		}
	} else if c.state == dialing {
		c.hdr.control(c.d.s, 0, c.guestISS+1, header.TCPFlagRst|header.TCPFlagAck, 0, nil)
	}
	c.freeLocked(rstHost)
}

// kill resets the flow both ways: an eviction, the egress policy, the
// Stack's end.
func (c *directConn) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked(true)
}

// freeLocked closes the host socket (with a RST if rst) and releases
// everything the flow holds.
func (c *directConn) freeLocked(rst bool) {
	if c.state == closed {
		return
	}
	c.state = closed
	c.timer.Stop()
	c.dropHeldLocked()
	if c.ackTimer != nil {
		c.ackTimer.Stop()
	}
	if c.stopAttempt != nil {
		c.stopAttempt()
		c.stopAttempt = nil
	}
	if c.fd >= 0 {
		if rst {
			unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		// Closing the fd takes it out of the epoll instance.
		unix.Close(c.fd)
		c.fd = -1
	}
	d := c.d
	d.mu.Lock()
	if d.conns[c.key] == c {
		delete(d.conns, c.key)
	}
	delete(d.byID, c.id)
	d.mu.Unlock()
	s := d.s
	s.untrackFlow(c.flow)
	s.tcp.done(c.a)
	s.flows.leave()
}
