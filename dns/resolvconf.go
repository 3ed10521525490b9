package dns

import (
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// resolvCheckEvery is how often, at most, the forwarder looks at the
// resolv.conf its upstream came from: a stat(2) on a query at least this
// long after the last look, as libslirp does (1 s), so a host that changes
// networks (Wi-Fi, a VPN) moves the namespace's DNS along with it.
const resolvCheckEvery = time.Second

// resolvFollower keeps a Forwarder's upstream in step with a resolv.conf
// file. The file is looked at on the query path, by one query at a time;
// the others go on with the upstream they find. Nothing runs in between
// queries: a forwarder nobody asks does not touch the file.
type resolvFollower struct {
	path  string
	check func(netip.AddrPort) error // vets a new upstream; nil accepts all
	logf  func(format string, args ...any)
	port  uint16        // 53; tests move it to their fake resolvers' port
	every time.Duration // resolvCheckEvery; tests lower it

	mu      sync.Mutex // held by the query that looks at the file
	next    time.Time  // no look before then; guarded by mu
	seen    fileID     // the version of the file last read; guarded by mu
	lastErr string     // the last failure logged, so it is logged once; guarded by mu
}

// fileID tells versions of a file apart: a rewrite in place changes the
// size or the times, a replacement (write a new file, rename it over the
// old, as NetworkManager and systemd-resolved do) the inode.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func idOf(fi os.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, true
}

// poll looks at the file if it is time to and, when it changed and names
// a usable upstream other than the current one, stores that in up (only
// poll stores there, under r.mu, so versions are stored in the order they
// were read). Failures are logged once each and leave the upstream as it
// was: a resolv.conf that is briefly empty or missing while the host
// reconnects must not take DNS down with it.
func (r *resolvFollower) poll(now time.Time, up *atomic.Pointer[netip.AddrPort]) {
	if !r.mu.TryLock() {
		return // another query is looking
	}
	defer r.mu.Unlock()
	if now.Before(r.next) {
		return
	}
	r.next = now.Add(r.every)

	cur := *up.Load()
	fi, err := os.Stat(r.path)
	if err != nil {
		r.fail(cur, err)
		return
	}
	if id, ok := idOf(fi); ok && id == r.seen {
		return
	}
	ap, id, err := r.read()
	// A version that fails is not read again until it changes; a file
	// that could not be opened has no version and is tried at each look.
	r.seen = id
	if err == nil && r.check != nil {
		err = r.check(ap)
	}
	if err != nil {
		r.fail(cur, err)
		return
	}
	r.lastErr = ""
	if ap == cur {
		return
	}
	up.Store(&ap)
	r.logf("dns: upstream is now %v (%s changed; was %v)", ap, r.path, cur)
}

// read returns the file's first usable nameserver, on r.port, and the
// version read.
func (r *resolvFollower) read() (netip.AddrPort, fileID, error) {
	ap, id, err := readResolvConf(r.path)
	return netip.AddrPortFrom(ap.Addr(), r.port), id, err
}

func (r *resolvFollower) fail(cur netip.AddrPort, err error) {
	msg := err.Error()
	if msg == r.lastErr {
		return
	}
	r.lastErr = msg
	r.logf("dns: keeping upstream %v: %s", cur, msg)
}
