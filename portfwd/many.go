package portfwd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Many is a forward of many ports at once: pasta's "-t ~25", every port but
// some, tens of thousands of them. Each port gets a host socket, but not a
// goroutine: the sockets wait in one epoll set, which one goroutine watches
// through the runtime's poller. A TCP client is accepted there and served
// as any forward's; a UDP socket that receives a datagram becomes a forward
// of its own (a goroutine and a flow table) from then on.
//
// Its ports are not listed by List nor removable: it lives as long as Run.
type Many struct {
	Proto string // "tcp" or "udp"
	// HostAddr is the address to listen on. Zero: both families on one
	// dual-stack socket per port, as pasta does (IPv4 clients go to
	// Guest4, IPv6 ones to Guest6, or Guest4 when the plan has none).
	HostAddr   netip.Addr
	HostIfname string
	Ports      []PortPair
}

// PortPair is one port of a Many: host port → guest port.
type PortPair struct{ Host, Guest uint16 }

// ErrNoFiles is returned (wrapped) by AddMany when the process runs out of
// file descriptors (EMFILE, ENFILE) before every port is bound: pasta
// gives up then, whatever it bound.
var ErrNoFiles = errors.New("not enough file descriptors for the ports")

// many is a Many being served.
type many struct {
	Many
	rule  Rule                 // the template of its ports' rules: Proto, addresses
	dual4 netip.Addr           // the guest of IPv4 clients on dual-stack sockets
	ep    *os.File             // the epoll set, non-blocking, in the runtime's poller
	socks []manySock           // indexed by the epoll events' data
	bound [1 << 16 / 64]uint64 // the host ports bound, a bit each
}

type manySock struct {
	fd   int // -1 once closed or handed over
	port PortPair
}

// AddMany binds a host socket for every port of m that it can, as pasta's
// "weak" forwards do: a port that cannot be bound (in use, privileged) is
// skipped. It returns how many ports it bound; an error if none, or
// ErrNoFiles (nothing kept bound then), or ErrClosed.
func (r *Registry) AddMany(ctx context.Context, m Many) (int, error) {
	rule := Rule{Proto: m.Proto, HostAddr: m.HostAddr, HostPort: 1, HostIfname: m.HostIfname, GuestPort: 1}
	dual := !m.HostAddr.IsValid()
	if dual {
		rule.HostAddr = netip.IPv6Unspecified()
	}
	rule, err := r.resolve(rule)
	if err != nil {
		return 0, fmt.Errorf("add %s ports: %w", m.Proto, err)
	}
	mm := &many{Many: m, rule: rule}
	if dual {
		mm.dual4 = r.cfg.Plan.Guest4
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("add %s ports: epoll: %w", m.Proto, err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return 0, fmt.Errorf("add %s ports: epoll: %w", m.Proto, err)
	}
	mm.ep = os.NewFile(uintptr(epfd), "portfwd-epoll")
	for _, p := range m.Ports {
		fd, err := bindRaw(m.Proto, rule.HostAddr, dual, p.Host, m.HostIfname)
		if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
			mm.close()
			return 0, fmt.Errorf("add %s ports: %w (%w)", m.Proto, ErrNoFiles, err)
		}
		if err != nil {
			continue // weak: pasta skips the ports it cannot bind
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(len(mm.socks))}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			mm.close()
			return 0, fmt.Errorf("add %s ports: epoll: %w", m.Proto, err)
		}
		mm.socks = append(mm.socks, manySock{fd: fd, port: p})
		mm.bound[p.Host/64] |= 1 << (p.Host % 64)
	}
	if len(mm.socks) == 0 {
		mm.close()
		return 0, fmt.Errorf("add %s ports: no port could be bound", m.Proto)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.state == stateClosed {
		mm.close()
		return 0, fmt.Errorf("add %s ports: %w", m.Proto, ErrClosed)
	}
	r.mu.many = append(r.mu.many, mm)
	if r.mu.state == stateRunning {
		r.wg.Go(func() { r.serveMany(mm) })
	}
	return len(mm.socks), nil
}

// Forwards reports whether a forward, or a Many, listens on the host's
// port of proto (pasta's -T auto leaves those out: its own listeners).
func (r *Registry) Forwards(proto string, port uint16) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.mu.fwds {
		if f.Proto == proto && f.HostPort == port {
			return true
		}
	}
	for _, mm := range r.mu.many {
		if mm.Proto == proto && mm.bound[port/64]&(1<<(port%64)) != 0 {
			return true
		}
	}
	return false
}

// bindRaw opens a non-blocking socket bound to addr:port (dual-stack when
// dual), listening for TCP.
func bindRaw(proto string, addr netip.Addr, dual bool, port uint16, ifname string) (int, error) {
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	var sa unix.Sockaddr
	domain := unix.AF_INET
	if addr.Is6() {
		domain = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	err = func() error {
		if typ == unix.SOCK_STREAM {
			// As Go's listeners: a port in TIME_WAIT can be bound again.
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
		}
		if domain == unix.AF_INET6 {
			v6only := 1
			if dual {
				v6only = 0
			}
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
				return err
			}
		}
		if ifname != "" {
			if err := unix.BindToDevice(fd, ifname); err != nil {
				return err
			}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return err
		}
		if typ == unix.SOCK_STREAM {
			return unix.Listen(fd, unix.SOMAXCONN)
		}
		return nil
	}()
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// close closes every socket still held and the epoll set.
func (mm *many) close() {
	for i := range mm.socks {
		if s := &mm.socks[i]; s.fd >= 0 {
			unix.Close(s.fd)
			s.fd = -1
		}
	}
	mm.ep.Close()
}

// serveMany waits for clients on mm's sockets until the Registry shuts
// down, then closes them.
func (r *Registry) serveMany(mm *many) {
	stop := context.AfterFunc(r.ctx, func() { mm.ep.Close() }) // wakes the wait below
	defer stop()
	rc, err := mm.ep.SyscallConn()
	if err != nil {
		r.logf("portfwd: %s ports: %v", mm.Proto, err)
		return
	}
	// Each socket closes once it is done with; the epoll set is closed
	// by then (shutdown), so nothing more is waited for.
	defer func() {
		for i := range mm.socks {
			if s := &mm.socks[i]; s.fd >= 0 {
				unix.Close(s.fd)
				s.fd = -1
			}
		}
	}()
	events := make([]unix.EpollEvent, 128)
	var delay time.Duration
	for {
		var n int
		var werr error
		err := rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			return werr != nil || n > 0
		})
		if err != nil || r.ctx.Err() != nil {
			return // closed: shutdown
		}
		if werr != nil {
			if werr == unix.EINTR {
				continue
			}
			r.logf("portfwd: %s ports: epoll_wait: %v", mm.Proto, werr)
			return
		}
		for _, ev := range events[:n] {
			i := int(ev.Fd)
			if i < 0 || i >= len(mm.socks) || mm.socks[i].fd < 0 {
				continue
			}
			if mm.Proto == "tcp" {
				if !r.acceptMany(mm, i, &delay) {
					return
				}
			} else {
				r.promoteUDP(mm, i)
			}
		}
	}
}

// acceptMany accepts every client waiting on socket i and starts serving
// each. It returns false if the Registry shut down while it backed off.
func (r *Registry) acceptMany(mm *many, i int, delay *time.Duration) bool {
	s := &mm.socks[i]
	for {
		nfd, _, err := unix.Accept4(s.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == unix.EAGAIN:
			*delay = 0
			return true
		case err == unix.EINTR, err == unix.ECONNABORTED:
			continue
		case err != nil:
			// EMFILE and friends: the client waits in the backlog, and
			// the level-triggered set reports it again after a pause.
			r.logf("portfwd: %s port %d: accept: %v", mm.Proto, s.port.Host, err)
			return backoff(r.ctx, delay)
		}
		f := os.NewFile(uintptr(nfd), "tcp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			r.logf("portfwd: %s port %d: %v", mm.Proto, s.port.Host, err)
			continue
		}
		fwd := mm.forward(s.port, r.ctx)
		r.wg.Go(func() { r.forwardTCP(fwd, c) })
	}
}

// promoteUDP takes socket i out of the set and serves it as a forward of
// its own, with its flow table, from now on.
func (r *Registry) promoteUDP(mm *many, i int) {
	s := &mm.socks[i]
	// Control, not Fd: Fd would make the set blocking.
	if rc, err := mm.ep.SyscallConn(); err == nil {
		rc.Control(func(ep uintptr) { unix.EpollCtl(int(ep), unix.EPOLL_CTL_DEL, s.fd, nil) })
	}
	f := os.NewFile(uintptr(s.fd), "udp")
	s.fd = -1
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		r.logf("portfwd: %s port %d: %v", mm.Proto, s.port.Host, err)
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	fwd := mm.forward(s.port, ctx)
	fwd.cancel, fwd.pc = cancel, pc.(*net.UDPConn)
	context.AfterFunc(ctx, fwd.closeSocket)
	r.wg.Go(func() { r.serveUDP(fwd) })
}

// forward is the forward of one port of mm, for the code that serves
// every forward.
func (mm *many) forward(p PortPair, ctx context.Context) *forward {
	f := &forward{Entry: Entry{Rule: mm.rule}, ctx: ctx, dual4: mm.dual4}
	f.HostPort, f.GuestPort = p.Host, p.Guest
	return f
}

// guestFor is where client goes: the forward's guest, or on a dual-stack
// socket the IPv4 guest for an IPv4 client.
func (f *forward) guestFor(client netip.AddrPort) netip.Addr {
	if f.dual4.IsValid() && client.Addr().Is4In6() {
		return f.dual4
	}
	return f.GuestAddr
}
