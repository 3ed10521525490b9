package stack

import (
	"os"
	"runtime/pprof"
)

// DEBUG ONLY, not a supported interface: USERNET_DEBUG_CPUPROFILE=FILE
// makes Run write a CPU profile of the whole process to FILE, from the
// start of Run until its teardown. It exists to profile the per-packet
// path under the real benchmark (bench/run.sh) where perf is unavailable;
// nothing documents it and nothing should rely on it.
const debugCPUProfileEnv = "USERNET_DEBUG_CPUPROFILE"

// startDebugProfile starts the profile if asked to and returns its stop
// function (a no-op otherwise).
func startDebugProfile(logf func(string, ...any)) func() {
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
