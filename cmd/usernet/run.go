package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"

	"github.com/usernet/usernet/nsjoin"
	"github.com/usernet/usernet/nsrun"
)

// forwardedSignals go from usernet to the command of `usernet run`.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runMain is `usernet run [OPTION]... [--] COMMAND [ARG]...`: new user, net
// and mount namespaces with a configured tap0, the command's resolv.conf
// pointing at the virtual DNS, and the command's exit status as ours.
func runMain(argv []string, stdout, stderr io.Writer) int {
	o, args, err := parseRunFlags(argv, stderr)
	if code, done := handleParse(o, err, stdout, stderr); done {
		return code
	}
	if len(args) == 0 {
		fmt.Fprintf(stderr, "usernet run: no command given (usernet run [OPTION]... -- COMMAND [ARG]...)\n")
		return 1
	}
	o.configure = true
	o.tapName = "tap0"
	return runCommand(o, args, "usernet run", nil, stderr)
}

// runCommand runs args in new namespaces served with o (usernet run, and
// pasta without a target), and returns its exit status; prefix starts
// usernet's own error lines. The signals of forwardedSignals are passed on
// to the command, except those in quitOn, on which runCommand returns 0 at
// once and leaves the command running without a network (pasta's
// SIGTERM and SIGQUIT); with quitOn, the command also outlives usernet
// when it dies otherwise, as pasta's does.
func runCommand(o *options, args []string, prefix string, quitOn []os.Signal, stderr io.Writer) int {
	resolv := ""
	if !o.disableDNS {
		for _, a := range []netip.Addr{o.plan.DNS4, o.plan.DNS6} {
			if a.IsValid() {
				resolv += "nameserver " + a.String() + "\n"
			}
		}
	}
	child, err := nsrun.Start(args, resolv, len(quitOn) > 0)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
		if errors.Is(err, exec.ErrNotFound) {
			return 127 // as a shell reports a command it cannot find
		}
		return 1
	}

	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwardedSignals...)
	defer signal.Stop(sigc)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		out := output{stdout: io.Discard, stderr: io.Discard}
		served <- serve(ctx, o, nsjoin.Target{PID: child.PID()}, out, func() error {
			close(ready)
			return child.Release()
		})
	}()

	// Until the network is up, a failure ends the command at its barrier.
	select {
	case <-ready:
	case err := <-served:
		child.Wait()
		if err == nil {
			err = errors.New("network stopped before it was ready")
		}
		fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
		return 1
	}

	waited := make(chan struct{})
	var code int
	var werr error
	go func() {
		code, werr = child.Wait()
		close(waited)
	}()
	for {
		select {
		case sig := <-sigc:
			if slices.Contains(quitOn, sig) {
				cancel()
				if served != nil {
					<-served
				}
				child.Leave()
				return 0
			}
			child.Signal(sig)
		case err := <-served:
			// The network died under the command: say so, let it finish.
			if err != nil {
				fmt.Fprintf(stderr, "%s: network: %v\n", prefix, err)
			}
			served = nil
		case <-waited:
			cancel()
			if served != nil {
				if err := <-served; err != nil {
					fmt.Fprintf(stderr, "%s: network: %v\n", prefix, err)
				}
			}
			if werr != nil {
				fmt.Fprintf(stderr, "%s: %v\n", prefix, werr)
			}
			return code
		}
	}
}

// parseRunFlags parses the options of `usernet run`; the first argument that
// is not an option (or everything after --) is the command.
func parseRunFlags(argv []string, stderr io.Writer) (*options, []string, error) {
	return parseFlagsMode(argv, stderr, 0, false)
}
