// Package testutil holds test helpers shared by usernet's packages: a
// goroutine leak check and a logger that goes quiet when its test ends.
// Only _test.go files import it (internal/deptest refuses it to every
// production package), and it imports no other usernet package.
package testutil

import (
	"bytes"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// QuietLogf logs through t until the test ends, then discards: components
// may log from their own goroutines after the test returned.
func QuietLogf(t testing.TB) func(string, ...any) {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Logf(format, args...)
		}
	}
}

var goroutineHeader = regexp.MustCompile(`(?m)^goroutine (\d+) \[`)

// goroutines returns the stacks of all goroutines by ID.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if m := goroutineHeader.FindSubmatch(g); m != nil {
			out[string(m[1])] = string(g)
		}
	}
	return out
}

// CheckNoLeaks fails the test if goroutines started during it are still
// running (after a grace period of 5 s) once its cleanups have run. Call it
// first in the test, so that its cleanup runs last.
func CheckNoLeaks(t testing.TB) {
	t.Helper()
	before := goroutines()
	t.Cleanup(func() {
		var leaked []string
		for deadline := time.Now().Add(5 * time.Second); ; {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				if _, ok := before[id]; !ok && !strings.Contains(stack, "testing.tRunner") &&
					!strings.Contains(stack, "testing.(*T).Run") {
					leaked = append(leaked, stack)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(leaked) > 0 {
			t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}
