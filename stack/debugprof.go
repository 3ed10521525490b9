package stack

import (
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// DEBUG ONLY, not a supported interface: USERNET_DEBUG_CPUPROFILE=FILE
// makes Run write a CPU profile of the whole process to FILE, from the
// start of Run until its teardown. It exists to profile the per-packet
// path under the real benchmark (bench/run.sh) where perf is unavailable;
// nothing documents it and nothing should rely on it.
const debugCPUProfileEnv = "USERNET_DEBUG_CPUPROFILE"

// debugTraceEnv is the same for an execution trace (runtime/trace), for
// the scheduler latency of the request/response path: `go tool trace
// -pprof=sched FILE`.
const debugTraceEnv = "USERNET_DEBUG_TRACE"

// startDebugProfile starts the profile if asked to and returns its stop
// function (a no-op otherwise).
func startDebugProfile(logf func(string, ...any)) func() {
	stopTrace := startDebugTrace(logf)
	stopCPU := startDebugCPUProfile(logf)
	return func() {
		stopCPU()
		stopTrace()
	}
}

func startDebugTrace(logf func(string, ...any)) func() {
	path := os.Getenv(debugTraceEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		logf("stack: %s: %v", debugTraceEnv, err)
		return func() {}
	}
	if err := trace.Start(f); err != nil {
		logf("stack: %s: %v", debugTraceEnv, err)
		f.Close()
		return func() {}
	}
	return func() {
		trace.Stop()
		f.Close()
	}
}

func startDebugCPUProfile(logf func(string, ...any)) func() {
	path := os.Getenv(debugCPUProfileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		logf("stack: %s: %v", debugCPUProfileEnv, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		logf("stack: %s: %v", debugCPUProfileEnv, err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
