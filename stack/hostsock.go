package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Every host socket of a flow is opened here, and every address such a
// socket is connected or sent to passes hostSeam first.

// hostSeam is the one test seam of the data path, at the host-socket
// boundary: tests map destinations outside the virtual network to loopback
// servers (nothing may leave the machine), record what was asked, or fail
// or stall the way the kernel would. Everything above it (the TCP dial,
// the UDP ports and flows, the fast path, the ping proxy) runs as it
// ships, on real sockets.
type hostSeam interface {
	// toHost returns the address a socket for a flow to dst is connected
	// or sent to, or the error the socket fails with. It is asked once
	// per flow (network "tcp", "udp", "ping4", "ping6").
	toHost(ctx context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error)
	// fromHost maps the source of a datagram a host socket received back
	// to the address the flow knows it by.
	fromHost(src netip.AddrPort) netip.AddrPort
}

// toHost applies the seam; without one, dst is the host address.
func (s *Stack) toHost(ctx context.Context, network string, dst netip.AddrPort) (netip.AddrPort, error) {
	if s.cfg.host == nil {
		return dst, nil
	}
	return s.cfg.host.toHost(ctx, network, dst)
}

// fromHost applies the seam to a received datagram's source.
func (s *Stack) fromHost(src netip.AddrPort) netip.AddrPort {
	if s.cfg.host == nil {
		return src
	}
	return s.cfg.host.fromHost(src)
}

// dialHost opens the host socket for one flow. network is "tcp", "ping4"
// or "ping6" (an unprivileged ICMP echo socket, port ignored); UDP flows
// use openHostUDP.
// Host sockets are bound to OutboundAddr/OutboundAddr6 when set, also for
// the gateway's mapping to the host's loopback, as slirp4netns binds every
// outbound socket (Linux connects a socket bound to a local non-loopback
// address to 127.0.0.1 through lo; the server sees that source).
func (s *Stack) dialHost(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	dst, err := s.toHost(ctx, network, dst)
	if err != nil {
		return nil, err
	}
	local := s.cfg.OutboundAddr6
	if dst.Addr().Is4() {
		local = s.cfg.OutboundAddr.Unmap()
	}
	switch network {
	case "ping4", "ping6":
		return dialPing(dst.Addr(), local)
	}
	if network != "tcp" {
		return nil, fmt.Errorf("dial %s %v: unknown network", network, dst)
	}
	c, err := dialTCP(ctx, dst, local)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// openHostUDP opens the host socket of a guest UDP port (udpPort): not
// connected, with IP_RECVERR, bound to the host's loopback address for
// flows to the gateway (nothing but local processes can reach it then),
// else to OutboundAddr/OutboundAddr6 when set, else to the wildcard address
// (as slirp4netns).
func (s *Stack) openHostUDP(k udpPortKey) (*udpHost, error) {
	v6 := k.src.Addr().Is6()
	network, local := "udp4", netip.IPv4Unspecified()
	if v6 {
		network, local = "udp6", netip.IPv6Unspecified()
	}
	switch {
	case k.loopback && v6:
		local = hostLoopback6
	case k.loopback:
		local = hostLoopback4
	case !v6 && s.cfg.OutboundAddr.IsValid():
		local = s.cfg.OutboundAddr.Unmap()
	case v6 && s.cfg.OutboundAddr6.IsValid():
		local = s.cfg.OutboundAddr6
	}
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, fmt.Errorf("udp socket for %v: %w", k.src, err)
	}
	rc, err := pc.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) { serr = setRecvErr(int(fd), v6) })
		err = errors.Join(err, serr)
	}
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("udp socket for %v: IP_RECVERR: %w", k.src, err)
	}
	return &udpHost{pc: pc, rc: rc}, nil
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
