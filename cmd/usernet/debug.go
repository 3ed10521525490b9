//go:build usernet_debug

package main

// Debugging aids, compiled only into a binary built with
// `-tags usernet_debug` (test.sh and bench/run.sh build one beside the
// real binary): the usernet that ships reads no debug switch. They are not
// an interface; docs/cli.md lists them.
//
//	USERNET_DEBUG_NO_OFFLOAD=1     open the tap without IFF_VNET_HDR and offloads
//	USERNET_DEBUG_CPUPROFILE=FILE  CPU profile of the whole process while serving
//	USERNET_DEBUG_TRACE=FILE       execution trace (go tool trace -pprof=sched FILE)

import (
	"os"
	"runtime/pprof"
	"runtime/trace"
)

func debugNoOffload() bool { return os.Getenv("USERNET_DEBUG_NO_OFFLOAD") != "" }

// startDebugProfiles starts what the environment asks for and returns the
// function that stops it.
func startDebugProfiles(logf func(string, ...any)) func() {
	var stops []func()
	if path := os.Getenv("USERNET_DEBUG_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			logf("debug trace: %v", err)
		} else if err := trace.Start(f); err != nil {
			logf("debug trace: %v", err)
			f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	if path := os.Getenv("USERNET_DEBUG_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			logf("debug CPU profile: %v", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			logf("debug CPU profile: %v", err)
			f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	return func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}
