// Command usernet-bench is the benchmark harness behind bench/run.sh. It runs usernet (with
// slirp4netns's command line and, called as pasta, with pasta's), slirp4netns, and pasta
// (this host's and pasta 2025 from a Debian trixie root) through the same workloads, each in
// its own unprivileged user+net namespace, and writes the report (docs/bench/results.md).
//
// Subcommands:
//
//	drive      run every workload against every backend; writes results.json (run.sh runs it
//	           as an unprivileged user inside a private network namespace)
//	report     results.json → results.md, results.csv, chart.svg
//	token-get  (inside a namespace) read the token the driver serves on the host's loopback
//	rr         (inside a namespace) TCP request/response, 1 or N clients at once: 1-byte
//	           ping-pong or connect/request/close
//	udpflows   (inside a namespace) many UDP flows of small queries at once (a DNS storm)
//	hold       (inside a namespace) open N idle TCP connections and keep them open
//	waitnet    (inside a namespace) poll until the tap has its address and default route
//
// It uses the standard library only, and sends traffic only to the host's loopback (through
// the namespace's gateway 10.0.2.2) or to servers inside the namespaces it made.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "drive":
		err = drive(args)
	case "report":
		err = report(args)
	case "token-get":
		err = tokenGet(args)
	case "rr":
		err = rrClient(args)
	case "udpflows":
		err = udpFlowsClient(args)
	case "hold":
		err = holdClient(args)
	case "echo":
		err = echoServer(args)
	case "waitnet":
		err = waitNet(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "usernet-bench %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: usernet-bench drive|report|token-get|rr|udpflows|hold|echo|waitnet [FLAGS] (see bench/README.md)")
	os.Exit(2)
}
