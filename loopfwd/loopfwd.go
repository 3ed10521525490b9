// Package loopfwd forwards TCP ports of the namespace's loopback to the
// host's loopback (pasta's -T): a listener made inside the namespace (by
// the caller, e.g. through nsjoin's socket broker) takes the namespace's
// connections, and each is relayed to the same family's loopback address
// on the host at the target port.
//
// It owns the listeners it is handed and the goroutines of Run. It may
// import relay and nothing else of usernet, never gVisor.
package loopfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/usernet/usernet/relay"
)

// Forward is one listener in the namespace and the host port it leads to.
type Forward struct {
	Listener net.Listener // on 127.0.0.1 or ::1 inside the namespace
	HostPort uint16
}

// Run serves the forwards until ctx ends, then closes the listeners and
// waits for every connection to end.
func Run(ctx context.Context, fwds []Forward, logf func(string, ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var wg sync.WaitGroup
	for _, f := range fwds {
		Serve(ctx, &wg, f, logf)
	}
	<-ctx.Done()
	wg.Wait()
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
