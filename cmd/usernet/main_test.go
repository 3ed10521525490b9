package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestOneProc(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	defer func(v bool) { startedOnOneP = v }(startedOnOneP)
	startedOnOneP = false

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS unset: oneProc left %d Ps, want 1", got)
	}

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "4")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 4 {
		t.Errorf("GOMAXPROCS=4 set by the user: oneProc changed it to %d", got)
	}
	if adaptProcs {
		t.Errorf("GOMAXPROCS=4: adaptProcs set")
	}

	runtime.GOMAXPROCS(4)
	t.Setenv("GOMAXPROCS", "auto")
	oneProc()
	if got := runtime.GOMAXPROCS(0); got != 1 || !adaptProcs {
		t.Errorf("GOMAXPROCS=auto: %d Ps, adaptProcs %v; want 1, true", got, adaptProcs)
	}
	adaptProcs = false
}

// The helper process of TestStartsOnOneP: what it started with.
func TestStartsOnOnePHelper(t *testing.T) {
	if os.Getenv("GO_USERNET_TEST_ONEPROC") == "" {
		t.Skip("helper")
	}
	fmt.Printf("procs=%d started=%v\n", runtime.GOMAXPROCS(0), startedOnOneP)
	for _, kv := range os.Environ() {
		fmt.Println(kv)
	}
}

// Without GOMAXPROCS in its environment the process starts on one P
// (oneproc.c), and by the time Go code runs its environment is the one it
// was given, whichever entry the swap took; a GOMAXPROCS of the user's is
// left alone.
func TestStartsOnOneP(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: every process starts on one P")
	}
	for _, tc := range []struct {
		env     []string
		procs   string
		started bool
	}{
		{[]string{"A=1", "_=/bin/x", "B=2"}, "1", true},
		{[]string{"A=1", "B=2"}, "1", true},
		{[]string{"GODEBUG=x=1", "A=1"}, "1", true},
		{[]string{"GOMAXPROCS=2", "A=1"}, "2", false},
		{[]string{"GODEBUG=x=1"}, "", false}, // nothing to swap: the runtime's default
	} {
		// The marker starts with GO: never the swapped entry.
		env := append([]string{"GO_USERNET_TEST_ONEPROC=1"}, tc.env...)
		cmd := exec.Command(os.Args[0], "-test.run=^TestStartsOnOnePHelper$", "-test.v")
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v: %s", tc.env, err, out)
		}
		lines := strings.Split(string(out), "\n")
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "procs=") })
		if i < 0 {
			t.Fatalf("%v: no output: %s", tc.env, out)
		}
		var procs string
		started := strings.HasSuffix(lines[i], " started=true")
		fmt.Sscanf(lines[i], "procs=%s", &procs)
		if started != tc.started || tc.procs != "" && procs != tc.procs {
			want := fmt.Sprintf("procs=%s started=%v", tc.procs, tc.started)
			t.Errorf("%v: %s, want %s", tc.env, lines[i], want)
		}
		var got []string
		for _, l := range lines[i+1:] {
			if strings.Contains(l, "=") && !strings.HasPrefix(l, "---") && !strings.HasPrefix(l, "===") {
				got = append(got, l)
			}
		}
		slices.Sort(got)
		slices.Sort(env)
		if !slices.Equal(got, env) {
			t.Errorf("environment %q, want %q", got, env)
		}
	}
}
