package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/internal/pollfd"
	"github.com/usernet/usernet/nsjoin"
	"github.com/usernet/usernet/policy"
	"github.com/usernet/usernet/sandbox"
)

// --enable-sandbox and --enable-seccomp: once prepare has done everything
// that needs the host's view (the tap from the nsjoin child, the DNS
// upstream from resolv.conf, outbound interfaces, the target watch), the
// process re-executes itself in place into the sandbox (same PID, same
// argv), keeping the fds it needs, and the new image runs the network
// (resumeMain). docs/sandbox.md explains why and what it costs.

// sandboxState is what the re-executed image needs beyond its argv (which
// it parses again) and what it inherits under the same fd numbers (the
// ready and exit fds of the command line, and these).
type sandboxState struct {
	Tap      int               // the tap's fd
	VnetHdr  bool              `json:",omitempty"` // the tap was opened with IFF_VNET_HDR
	API      int               `json:",omitempty"` // the API socket's listening fd (--api-socket), 0 for none
	APIUIDs  []uint32          `json:",omitempty"` // who may use it: our uids, asked before the filter (no getuid under it), and root
	Pcap     int               `json:",omitempty"` // --pcap's file, opened (and truncated) before the sandbox; 0 for none
	Watch    nsjoin.WatchState // the target watch: an inherited pidfd, or the path (see sandboxBinds)
	Upstream string            `json:",omitempty"` // DNS upstream, resolved before the sandbox
	Resolv   string            `json:",omitempty"` // the resolv.conf the upstream follows, absolute
	Out4     string            `json:",omitempty"` // --outbound-addr, resolved
	Out6     string            `json:",omitempty"` // --outbound-addr6, resolved
	ProcNet  []int             `json:",omitempty"` // the namespace's /proc/net files (pasta's auto)
	HostNet  []int             `json:",omitempty"` // the host's /proc/net/tcp, tcp6 (pasta's -T auto)
	Broker   int               `json:",omitempty"` // the socket broker's socket (pasta's local path)
	Pasta    *pastaState       `json:",omitempty"` // pasta's command line: re-parsed with this
	Egress   *policy.Config    `json:",omitempty"` // the egress policy, its file read before the sandbox
}

// serveSandboxed is realMain with --enable-sandbox or --enable-seccomp:
// prepare here, then serve in the sandbox.
func serveSandboxed(o *options, t nsjoin.Target, out output, ps *pastaState) int {
	ctx, stop := notifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p, err := prepare(ctx, o, t, out)
	if err != nil {
		fmt.Fprintf(out.stderr, "usernet: %v\n", err)
		return 1
	}
	defer p.close()
	p.pasta = ps
	// From here until the new image handles them again, SIGINT and
	// SIGTERM kill the process (the default action): one caught now would
	// be lost in the exec.
	if stop() {
		return 0 // a signal came during prepare
	}
	err = enterSandbox(p)
	fmt.Fprintf(out.stderr, "usernet: %v\n", err)
	return 1
}

// notifyContext is signal.NotifyContext, except that stop reports whether
// one of the signals came: none is lost between the two.
func notifyContext(parent context.Context, sigs ...os.Signal) (context.Context, func() bool) {
	ctx, cancel := context.WithCancel(parent)
	c := make(chan os.Signal, 1)
	signal.Notify(c, sigs...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	var got bool // written by the goroutine, read after wg.Wait
	wg.Go(func() {
		select {
		case <-c:
			got = true
			cancel()
		case <-done:
		}
	})
	var once sync.Once
	return ctx, func() bool {
		once.Do(func() {
			signal.Stop(c)
			close(done)
			wg.Wait()
			cancel()
			got = got || len(c) > 0
		})
		return got
	}
}

func sandboxConfig(o *options) sandbox.Config {
	c := sandbox.Config{Mounts: o.enableSandbox, Seccomp: o.enableSeccomp}
	if o.runAs != nil {
		c.RunAs = &sandbox.IDs{UID: o.runAs.UID, GID: o.runAs.GID}
	}
	return c
}

// sandboxBinds are the host directories the sandbox must show besides /etc
// and /run (which it always shows, read-only), all read-only. Not the API
// socket's: its listener is inherited, and its directory (say $HOME) would
// be the whole of what the sandbox exposes; so its file stays after exit.
//   - a path target's directory, read-only, so that the target watch keeps
//     seeing the namespace file at its path (and its removal). Not an fd of
//     the directory: with it the process could reach, and with unlinkat
//     delete, anything of the user's through "..";
//   - the followed resolv.conf's directory and that of the file it links
//     to, read-only, when elsewhere (a --resolv-conf of one's own).
func sandboxBinds(o *options, resolvConf string) ([]sandbox.Bind, error) {
	var binds []sandbox.Bind
	for _, dir := range resolvDirs(resolvConf) {
		// Not / itself: a file there is not followed (logged once).
		if dir != "/" && !underAny(dir, "/etc", "/run") && !slices.ContainsFunc(binds, func(b sandbox.Bind) bool { return b.Path == dir }) {
			binds = append(binds, sandbox.Bind{Path: dir})
		}
	}
	if o.path == "" {
		return binds, nil
	}
	abs, err := filepath.Abs(o.path)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	dir := filepath.Dir(abs)
	switch {
	case strings.HasPrefix(dir, "/proc/"):
		return binds, nil // watched through a pidfd (nsjoin.NewWatch)
	case dir == "/":
		return nil, fmt.Errorf("sandbox: the namespace file %s would need all of / in the sandbox; move it to a directory of its own", abs)
	}
	return append(binds, sandbox.Bind{Path: dir}), nil
}

// resolvDirs are the directories a followed resolv.conf is read from: its
// own and, if it is a symlink, its target's (none for "").
func resolvDirs(resolvConf string) []string {
	if resolvConf == "" {
		return nil
	}
	dirs := []string{filepath.Dir(resolvConf)}
	if real, err := filepath.EvalSymlinks(resolvConf); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	return dirs
}

// underAny reports whether dir is one of roots or below one.
func underAny(dir string, roots ...string) bool {
	for _, r := range roots {
		if dir == r || strings.HasPrefix(dir, r+"/") {
			return true
		}
	}
	return false
}

// enterSandbox re-executes the process into the sandbox with p's state. It
// returns only on failure, with p unchanged.
func enterSandbox(p *prepared) error {
	c := sandboxConfig(p.o)
	if sandbox.LandlockSupported() {
		// Once serving, usernet reads nothing but the resolv.conf it
		// follows (none with --dns-upstream) and writes, creates or
		// removes no file (what it writes was opened before): Landlock
		// confines reading to that file and forbids every change, so
		// that a sandboxed usernet can neither read what the sandbox
		// shows (all of /run, podman's registry credentials under
		// /run/user/UID among it) or, with the filter alone, what the
		// user can, nor change any of it. Only then does the filter let
		// openat through.
		c.ConfineFS = true
		c.Read = resolvDirs(p.resolvConf)
	} else if c.Seccomp {
		p.resolvConf = "" // no Landlock, no openat: the upstream stays fixed (run says so)
	}
	s := sandboxState{Tap: int(p.tap.Fd())}
	keep := []int{s.Tap}
	var wfd int
	if s.Watch, wfd = p.watch.State(); wfd >= 0 {
		keep = append(keep, wfd)
	}
	if p.api != nil {
		f, err := p.api.File() // a dup; p.api stays open until the exec
		if err != nil {
			return fmt.Errorf("api socket fd: %w", err)
		}
		defer f.Close()
		s.API = int(f.Fd())
		keep = append(keep, s.API)
		// Our uids map to themselves in the sandbox's user namespace.
		s.APIUIDs = []uint32{uint32(os.Getuid()), uint32(os.Geteuid()), 0}
	}
	if p.pcap != nil {
		s.Pcap = int(p.pcap.Fd())
		keep = append(keep, s.Pcap)
	}
	for _, f := range p.procNet {
		s.ProcNet = append(s.ProcNet, int(f.Fd()))
		keep = append(keep, int(f.Fd()))
	}
	for _, f := range p.hostNet {
		s.HostNet = append(s.HostNet, int(f.Fd()))
		keep = append(keep, int(f.Fd()))
	}
	if p.broker != nil {
		s.Broker = p.broker.FD()
		keep = append(keep, s.Broker)
	}
	if ps := p.pasta; ps != nil {
		s.Pasta = ps
		if ps.Detached {
			ps.LogFD = int(ps.log.Fd())
			keep = append(keep, ps.LogFD, detachedFD)
		}
	}
	s.VnetHdr = p.vnetHdr
	s.Egress = p.egress
	if p.upstream.IsValid() {
		s.Upstream = p.upstream.String()
	}
	s.Resolv = p.resolvConf
	if p.out4.IsValid() {
		s.Out4 = p.out4.String()
	}
	if p.out6.IsValid() {
		s.Out6 = p.out6.String()
	}
	// The ready and exit fds came inherited, so they stay open across
	// exec as they are; listing them makes sure.
	for _, f := range []*os.File{p.ready, p.exit} {
		if f != nil {
			keep = append(keep, int(f.Fd()))
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("sandbox state: %w", err)
	}
	if c.Mounts {
		if c.Binds, err = sandboxBinds(p.o, p.resolvConf); err != nil {
			return err
		}
	}
	return sandbox.Exec(c, b, keep...)
}

// resumeMain is the re-executed image: it is in the sandbox (or reports
// why not, and exits 1 without serving), rebuilds p from its argv and the
// inherited state, and serves.
func resumeMain(argv []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p, err := resume(argv)
	if err != nil {
		fmt.Fprintf(stderr, "usernet: %v\n", err)
		return 1
	}
	defer p.close()
	out := output{stdout: stdout, stderr: stderr}
	var onReady func() error
	if p.pasta != nil {
		out.noSettings, onReady = true, p.pasta.ready
	}
	if err := p.run(ctx, out, onReady); err != nil {
		fmt.Fprintf(stderr, "usernet: %v\n", err)
		return 1
	}
	return 0
}

func resume(argv []string) (*prepared, error) {
	b, err := sandbox.Resume()
	if err != nil {
		return nil, err
	}
	var s sandboxState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("sandbox: decode state: %w", err)
	}
	var o *options
	if s.Pasta != nil {
		o, err = resumePasta(s.Pasta)
	} else {
		o, _, err = parseFlags(argv, io.Discard, 2)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox: parse the command line again: %w", err)
	}
	p := &prepared{o: o, t: nsjoin.Target{PID: o.pid, NetnsPath: o.path, UsernsPath: o.usernsPath}}
	fail := func(err error) (*prepared, error) {
		p.close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	for _, a := range []struct {
		s   string
		dst *netip.Addr
	}{{s.Out4, &p.out4}, {s.Out6, &p.out6}} {
		if a.s != "" {
			if *a.dst, err = netip.ParseAddr(a.s); err != nil {
				return fail(err)
			}
		}
	}
	p.vnetHdr = s.VnetHdr
	p.egress = s.Egress
	p.resolvConf = s.Resolv
	if s.Upstream != "" {
		if p.upstream, err = netip.ParseAddrPort(s.Upstream); err != nil {
			return fail(err)
		}
	}
	if p.ready, err = inheritedFD(o.readyFD, "ready-fd"); err != nil {
		return fail(err)
	}
	if p.exit, err = inheritedFD(o.exitFD, "exit-fd"); err != nil {
		return fail(err)
	}
	if p.watch, err = nsjoin.WatchFromState(s.Watch); err != nil {
		return fail(err)
	}
	if s.API > 0 {
		if !pollfd.IsOpen(s.API) {
			return fail(fmt.Errorf("inherited API socket fd %d is not open", s.API))
		}
		unix.CloseOnExec(s.API)
		f := os.NewFile(uintptr(s.API), "api-socket")
		ln, err := net.FileListener(f)
		f.Close() // FileListener dups it
		if err != nil {
			return fail(fmt.Errorf("inherited API socket: %w", err))
		}
		ul, ok := ln.(*net.UnixListener)
		if !ok {
			ln.Close()
			return fail(fmt.Errorf("inherited API socket fd %d is not a unix socket", s.API))
		}
		p.api = ul
		p.apiUIDs = s.APIUIDs
	}
	if s.Pcap > 0 {
		if !pollfd.IsOpen(s.Pcap) {
			return fail(fmt.Errorf("inherited --pcap fd %d is not open", s.Pcap))
		}
		unix.CloseOnExec(s.Pcap)
		p.pcap = os.NewFile(uintptr(s.Pcap), o.pcap)
	}
	if s.Tap < 0 || !pollfd.IsOpen(s.Tap) {
		return fail(fmt.Errorf("inherited tap fd %d is not open", s.Tap))
	}
	unix.CloseOnExec(s.Tap)
	p.tap = os.NewFile(uintptr(s.Tap), "tap")
	for i, fd := range s.ProcNet {
		if !pollfd.IsOpen(fd) || i >= len(nsjoin.ProcNetFiles) {
			return fail(fmt.Errorf("inherited /proc/net fd %d is not open", fd))
		}
		unix.CloseOnExec(fd)
		p.procNet = append(p.procNet, os.NewFile(uintptr(fd), "netns /proc/net/"+nsjoin.ProcNetFiles[i]))
	}
	for _, fd := range s.HostNet {
		if !pollfd.IsOpen(fd) {
			return fail(fmt.Errorf("inherited /proc/net fd %d is not open", fd))
		}
		unix.CloseOnExec(fd)
		p.hostNet = append(p.hostNet, os.NewFile(uintptr(fd), "host /proc/net"))
	}
	if s.Broker > 0 {
		if !pollfd.IsOpen(s.Broker) {
			return fail(fmt.Errorf("inherited socket broker fd %d is not open", s.Broker))
		}
		p.broker = nsjoin.BrokerFromFD(s.Broker)
	}
	if ps := s.Pasta; ps != nil {
		p.pasta = ps
		if ps.Detached {
			if !pollfd.IsOpen(ps.LogFD) {
				return fail(fmt.Errorf("inherited log fd %d is not open", ps.LogFD))
			}
			unix.CloseOnExec(ps.LogFD)
			ps.log = os.NewFile(uintptr(ps.LogFD), "log")
		}
	}
	return p, nil
}

// printSeccomp says what the filter does, where slirp4netns lists the
// syscalls its deny-list blocks; openRead: openat is allowed for reading
// (the DNS upstream follows resolv.conf, under Landlock).
func printSeccomp(w io.Writer, openRead bool) {
	fmt.Fprintf(w, "seccomp: only %d syscalls are allowed, the others fail with EPERM (docs/sandbox.md)\n", len(sandbox.Allowed(openRead)))
}
