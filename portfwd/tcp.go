package portfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/usernet/usernet/relay"
)

// serveTCP accepts clients of f until f's listener is closed.
func (r *Registry) serveTCP(f *forward) {
	var delay time.Duration
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.logf("portfwd: %v: accept: %v", f.Rule, err)
			if !backoff(f.ctx, &delay) {
				return
			}
			continue
		}
		delay = 0
		r.wg.Go(func() { r.forwardTCP(f, c) })
	}
}

// backoff waits after a failed accept or read (EMFILE and friends), doubling
// *delay from 5ms up to 1s, as net/http does. It returns false if ctx ends first.
func backoff(ctx context.Context, delay *time.Duration) bool {
	*delay = min(max(2**delay, 5*time.Millisecond), time.Second)
	t := time.NewTimer(*delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// forwardTCP dials the guest for client and starts the relay between them,
// which lasts until both directions are done or f ends (a member of r.wg).
func (r *Registry) forwardTCP(f *forward, client net.Conn) {
	ctx := f.ctx
	caddr := addrPortOf(client.RemoteAddr())
	ga := f.guestFor(caddr)
	dst := netip.AddrPortFrom(ga, f.GuestPort)
	var guest net.Conn
	var err error
	if r.cfg.Splice != nil && caddr.Addr().Unmap().IsLoopback() {
		guest, err = r.splice(ctx, dst)
	} else {
		guest, err = r.dialTCP(ctx, r.srcFor(caddr, ga), dst)
	}
	if err != nil {
		r.logfUnlessDone(ctx, "portfwd: %v: client %v: %v", f.Rule, caddr, err)
		relay.Abort(client) // the client sees a reset, not an empty reply
		return
	}
	f.flows.Add(1)
	r.wg.Add(1)
	relay.Go(ctx, r.polled(client), r.polled(guest), &f.toGuest, &f.fromGuest, r.wg.Done)
}

// polled makes a host TCP conn wait through the Registry's Poller when idle
// (relay.PolledConn); from then on it must be closed through what polled
// returns.
func (r *Registry) polled(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok || r.poller == nil {
		return c
	}
	pc, err := r.poller.Conn(tc)
	if err != nil {
		return c
	}
	return pc
}

// splice connects to dst from inside the namespace (Config.Splice) within
// the dial timeout.
func (r *Registry) splice(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	return r.cfg.Splice(ctx, dst)
}

// dialTCP dials dst from src within the dial timeout, retrying once from any
// port when src's port is taken (two loopback clients with the same port both
// appear as the gateway).
func (r *Registry) dialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	c, err := r.cfg.Dialer.DialTCP(ctx, src, dst)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && src.Port() != 0 {
		c, err = r.cfg.Dialer.DialTCP(ctx, netip.AddrPortFrom(src.Addr(), 0), dst)
	}
	return c, err
}

// addrPortOf returns a's address and port, or the zero AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
