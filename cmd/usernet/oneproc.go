package main

/*
extern char *usernet_displaced_env;
*/
import "C"

import (
	"os"
	"strings"
)

// startedOnOneP: the runtime started with GOMAXPROCS=1 that oneproc.c put
// into its environment.
var startedOnOneP bool

// Before main, and before a test's TestMain: after every other package's
// initializer, which is as early as Go code runs.
func init() {
	if C.usernet_displaced_env == nil {
		return
	}
	kv := C.GoString(C.usernet_displaced_env)
	C.usernet_displaced_env = nil
	startedOnOneP = true
	os.Unsetenv("GOMAXPROCS")
	if k, v, ok := strings.Cut(kv, "="); ok {
		os.Setenv(k, v)
	}
}
