//go:build !usernet_debug

package main

import "io"

// Without -tags usernet_debug there are no debugging aids (debug.go).

func debugNoOffload() bool { return false }

func startDebugProfiles(func(string, ...any)) func() { return func() {} }

func debugProbeFS(io.Writer) {}
