// Command usernet gives an unprivileged network namespace a way out to the
// network, as slirp4netns does, with a gVisor netstack.
//
//	usernet [OPTION]... PID|PATH TAPNAME
//	usernet run [OPTION]... -- COMMAND [ARG]...
//	usernet pasta [PASTA OPTION]... [PID | COMMAND [ARG]...]   (also: called as pasta)
//	usernet status|top --api-socket PATH
//	usernet capture --api-socket PATH [-w FILE]
//
// main only wires: the command line becomes options and a netplan.Plan,
// and the packages do the work. It is the only package that parses flags
// and may import every other one.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/usernet/usernet/nsjoin"
	"github.com/usernet/usernet/nsrun"
	"github.com/usernet/usernet/sandbox"
)

// version is set at link time (-ldflags "-X main.version=...").
var (
	version = "0.1.0-dev"
	commit  = "unknown"
)

// slirpConfigVersionMax tells test suites which slirp4netns features to
// expect: 4 = --disable-dns and --outbound-addr work.
const slirpConfigVersionMax = 4

func main() {
	oneProc()
	// Re-executed helpers first: they must not parse flags or start anything.
	switch {
	case nsrun.IsInit():
		os.Exit(nsrun.InitMain())
	case sandbox.Resumed():
		os.Exit(resumeMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	if isPastaName(os.Args[0]) {
		os.Exit(pastaMain(os.Args[0], os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// oneProc runs Go code on one P (GOMAXPROCS=1) unless the user set
// GOMAXPROCS: a number is the runtime's, "auto" lets internal/procs raise
// it to the number of cores while goroutines queue for the one P, and
// lower it again when they stop. usernet's work for one connection is a
// chain of goroutine hand-offs (tap reader → TCP processor → relay → host
// socket, and back) whose other ends — the namespace's program, the host's
// server — need CPUs too; with a second P every hand-off woke a spinning
// thread that took a core from them. On a 2-core machine neither a second
// P nor "auto" gained measurably with many connections at once, and both
// cost memory; docs/design.md "One P" has the figures. When GOMAXPROCS is
// not set, the runtime has started on one P already (oneproc.c).
func oneProc() {
	if startedOnOneP {
		return
	}
	switch os.Getenv("GOMAXPROCS") {
	case "auto":
		adaptProcs = true
		fallthrough
	case "":
		runtime.GOMAXPROCS(1)
	}
}

// adaptProcs: GOMAXPROCS=auto (oneProc).
var adaptProcs bool

func realMain(argv []string, stdout, stderr io.Writer) int {
	if len(argv) > 0 && argv[0] == "run" {
		return runMain(argv[1:], stdout, stderr)
	}
	if len(argv) > 0 && argv[0] == "capture" {
		return captureMain(argv[1:], stdout, stderr)
	}
	if len(argv) > 0 && (argv[0] == "status" || argv[0] == "top") {
		return statusMain(argv[1:], argv[0] == "top", stdout, stderr)
	}
	if len(argv) > 0 && argv[0] == "pasta" {
		return pastaMain(os.Args[0], argv[1:], stdout, stderr)
	}
	o, _, err := parseFlags(argv, stderr, 2)
	if code, done := handleParse(o, err, stdout, stderr); done {
		return code
	}
	t := nsjoin.Target{PID: o.pid, NetnsPath: o.path, UsernsPath: o.usernsPath}
	out := output{stdout: stdout, stderr: stderr, announce: true}
	if sandboxConfig(o).Enabled() {
		return serveSandboxed(o, t, out, nil) // sandbox.go
	}
	ctx, stop := stopContext() // stopsig.go
	defer stop()
	if err := serve(ctx, o, t, out, nil); err != nil {
		fmt.Fprintf(stderr, "usernet: %v\n", err)
		return 1
	}
	return 0
}

// handleParse prints help, version or a parse error. done means exit now.
func handleParse(o *options, err error, stdout, stderr io.Writer) (code int, done bool) {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "usernet: %v\n", err)
		o := &options{}
		usage(stderr, newFlagSet(o, stderr))
		return 1, true
	case err != nil:
		fmt.Fprintf(stderr, "usernet: %v\n", err)
		return 1, true
	case o.help:
		usage(stdout, newFlagSet(&options{}, stdout))
		return 0, true
	case o.version:
		fmt.Fprintf(stdout, "usernet version %s\ncommit: %s\nSLIRP_CONFIG_VERSION_MAX: %d\n", version, commit, slirpConfigVersionMax)
		return 0, true
	}
	return 0, false
}
