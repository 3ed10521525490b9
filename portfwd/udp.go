package portfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxUDPFlows bounds the flows (and so the namespace sockets and
	// goroutines) of one UDP forward; datagrams from further clients are
	// dropped until a flow ends.
	maxUDPFlows = 1024
	maxDatagram = 65535
)

// udpFlow is one host client of a UDP forward and its socket in the namespace.
type udpFlow struct {
	client netip.AddrPort // as the host socket reports it; replies go here
	conn   net.Conn       // connected to the guest; closed by the flow's goroutine
	last   atomic.Int64   // time of the last datagram either way, UnixNano
}

func (fl *udpFlow) touch() { fl.last.Store(time.Now().UnixNano()) }

// udpFlows is the flow table of one UDP forward.
type udpFlows struct {
	mu sync.Mutex
	m  map[netip.AddrPort]*udpFlow
}

// serveUDP relays datagrams from f's host socket to per-client flows until
// the socket is closed. Each flow's goroutine relays the guest's replies back
// through the host socket and ends the flow when it has been idle.
func (r *Registry) serveUDP(f *forward) {
	flows := &udpFlows{m: make(map[netip.AddrPort]*udpFlow)}
	buf := make([]byte, maxDatagram)
	var delay time.Duration
	for {
		n, client, err := f.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.logf("portfwd: %v: read: %v", f.Rule, err)
			if !backoff(f.ctx, &delay) {
				return
			}
			continue
		}
		delay = 0

		// Under the lock: a flow found here was touched, so its goroutine
		// cannot expire it for a whole idle period.
		flows.mu.Lock()
		fl := flows.m[client]
		if fl != nil {
			fl.touch()
		}
		full := len(flows.m) >= maxUDPFlows
		flows.mu.Unlock()

		if fl == nil {
			if full {
				r.logfUnlessDone(f.ctx, "portfwd: %v: %d flows, dropping datagram from %v", f.Rule, maxUDPFlows, client)
				continue
			}
			// Dial outside the lock; only this goroutine adds flows.
			ga := f.guestFor(client)
			dst := netip.AddrPortFrom(ga, f.GuestPort)
			var conn net.Conn
			var err error
			if r.cfg.SpliceUDP != nil && client.Addr().Unmap().IsLoopback() {
				conn, err = r.cfg.SpliceUDP(dst)
			} else {
				conn, err = r.dialUDP(r.srcFor(client, ga), dst)
			}
			if err != nil {
				r.logfUnlessDone(f.ctx, "portfwd: %v: client %v: %v", f.Rule, client, err)
				continue
			}
			f.flows.Add(1)
			fl = &udpFlow{client: client, conn: conn}
			fl.touch()
			flows.mu.Lock()
			flows.m[client] = fl
			flows.mu.Unlock()
			r.wg.Go(func() { r.udpReplies(f, flows, fl) })
		}
		f.toGuest.Add(uint64(n))
		if _, err := fl.conn.Write(buf[:n]); err != nil {
			r.logfUnlessDone(f.ctx, "portfwd: %v: client %v: send to guest: %v", f.Rule, client, err)
		}
	}
}

// dialUDP is dialTCP's sibling: retry from any port when src's port is taken.
func (r *Registry) dialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	c, err := r.cfg.Dialer.DialUDP(src, dst)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && src.Port() != 0 {
		c, err = r.cfg.Dialer.DialUDP(netip.AddrPortFrom(src.Addr(), 0), dst)
	}
	return c, err
}

// udpReplies relays the guest's datagrams on fl back to fl's client until fl
// has been idle for the idle timeout, or f ends. It removes fl from flows and
// closes its conn.
func (r *Registry) udpReplies(f *forward, flows *udpFlows, fl *udpFlow) {
	idle := r.cfg.UDPIdleTimeout
	stop := context.AfterFunc(f.ctx, func() { fl.conn.Close() })
	defer func() {
		stop()
		flows.mu.Lock()
		if flows.m[fl.client] == fl {
			delete(flows.m, fl.client)
		}
		flows.mu.Unlock()
		fl.conn.Close()
	}()
	buf := make([]byte, maxDatagram)
	for {
		fl.conn.SetReadDeadline(time.Unix(0, fl.last.Load()).Add(idle))
		n, err := fl.conn.Read(buf)
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				flows.mu.Lock()
				expired := time.Since(time.Unix(0, fl.last.Load())) >= idle
				if expired {
					delete(flows.m, fl.client) // under the same lock as touch
				}
				flows.mu.Unlock()
				if expired {
					return
				}
				continue // traffic came in meanwhile; wait again
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // ICMP port unreachable from the guest: nothing listens yet
			}
			r.logfUnlessDone(f.ctx, "portfwd: %v: client %v: receive from guest: %v", f.Rule, fl.client, err)
			return
		}
		fl.touch()
		f.fromGuest.Add(uint64(n))
		if _, err := f.pc.WriteToUDPAddrPort(buf[:n], fl.client); err != nil {
			r.logfUnlessDone(f.ctx, "portfwd: %v: client %v: send to client: %v", f.Rule, fl.client, err)
		}
	}
}
