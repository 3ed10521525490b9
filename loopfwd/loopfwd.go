// Package loopfwd forwards ports of the namespace's loopback to the host's
// loopback (pasta's -T and -U): a TCP listener or UDP socket made inside
// the namespace (by the caller, through nsjoin's socket broker) takes the
// namespace's connections or datagrams, and each is relayed to the same
// family's loopback address on the host at the target port.
//
// It owns the sockets it is handed and the goroutines of Serve and
// ServeUDP. It may import relay and nothing else of usernet, never gVisor.
package loopfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/usernet/usernet/relay"
)

// Forward is one listener in the namespace and the host port it leads to.
type Forward struct {
	Listener net.Listener // on 127.0.0.1 or ::1 inside the namespace
	HostPort uint16
}

// Serve serves f on goroutines counted in wg until ctx ends or its
// listener is closed (which ctx's end does).
func Serve(ctx context.Context, wg *sync.WaitGroup, f Forward, logf func(string, ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	stop := context.AfterFunc(ctx, func() { f.Listener.Close() })
	wg.Go(func() {
		defer stop()
		serve(ctx, wg, f, logf)
	})
}

func serve(ctx context.Context, wg *sync.WaitGroup, f Forward, logf func(string, ...any)) {
	host := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), f.HostPort)
	if a, ok := f.Listener.Addr().(*net.TCPAddr); ok && a.IP.To4() == nil {
		host = netip.AddrPortFrom(netip.IPv6Loopback(), f.HostPort)
	}
	var delay time.Duration
	for {
		c, err := f.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
				continue
			case <-ctx.Done():
				return
			}
		}
		delay = 0
		wg.Go(func() {
			var d net.Dialer
			h, err := d.DialContext(ctx, "tcp", host.String())
			if err != nil {
				logf("namespace loopback %v → host %v: %v", f.Listener.Addr(), host, err)
				relay.Abort(c)
				return
			}
			relay.Run(ctx, c, h)
		})
	}
}

// UDPForward is one UDP socket in the namespace and the host port it leads
// to (pasta's -U).
type UDPForward struct {
	Conn     *net.UDPConn // bound to 127.0.0.1 or ::1 inside the namespace
	HostPort uint16
}

// udpIdle ends a flow of a UDP forward that has been quiet this long.
const udpIdle = 60 * time.Second

// ServeUDP relays f's datagrams until ctx ends or its socket is closed:
// each namespace source gets a host socket connected to the same family's
// loopback at HostPort, and the replies go back to that source. It runs
// on goroutines counted in wg.
func ServeUDP(ctx context.Context, wg *sync.WaitGroup, f UDPForward, logf func(string, ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	host := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), f.HostPort)
	if a, ok := f.Conn.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		host = netip.AddrPortFrom(netip.IPv6Loopback(), f.HostPort)
	}
	stop := context.AfterFunc(ctx, func() { f.Conn.Close() })
	wg.Go(func() {
		defer stop()
		var mu sync.Mutex
		flows := map[netip.AddrPort]*net.UDPConn{}
		defer func() {
			mu.Lock()
			for _, c := range flows {
				c.Close()
			}
			mu.Unlock()
		}()
		buf := make([]byte, 65535)
		for {
			n, src, err := f.Conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				continue // an ICMP error for an earlier datagram
			}
			mu.Lock()
			h := flows[src]
			if h == nil {
				h, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(host))
				if err != nil {
					mu.Unlock()
					logf("namespace loopback %v → host %v: %v", f.Conn.LocalAddr(), host, err)
					continue
				}
				flows[src] = h
				wg.Go(func() {
					// Replies, until the flow is idle (no datagram either
					// way: both push the deadline) or the forward ends.
					rbuf := make([]byte, 65535)
					for {
						n, err := h.Read(rbuf)
						if err != nil {
							if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
								break
							}
							continue
						}
						h.SetReadDeadline(time.Now().Add(udpIdle))
						f.Conn.WriteToUDPAddrPort(rbuf[:n], src)
					}
					mu.Lock()
					if flows[src] == h {
						delete(flows, src)
					}
					mu.Unlock()
					h.Close()
				})
			}
			mu.Unlock()
			h.SetReadDeadline(time.Now().Add(udpIdle))
			h.Write(buf[:n])
		}
	})
}
