package integration

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPastaBadInput: what pasta's command line does with bad input, against the real pasta
// 2025 and usernet in its place. Each case must exit 1 with pasta's kind of message and
// leave nothing behind: no process, and the port of a failed forward free.
func TestPastaBadInput(t *testing.T) {
	root := needTrixie(t)
	t.Parallel()
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			peer := newPastaPeer(t, root, name)
			tg := newTarget(t)
			pid := fmt.Sprint(tg.pid)

			busy, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			busyPort := busy.Addr().(*net.TCPAddr).Port
			free := freePort(t, "tcp")

			for _, c := range []struct {
				name string
				args []string
				want string // in stderr
			}{
				{"unknown option", []string{"--bogus", pid}, "unrecognized option '--bogus'"},
				{"unknown option with a value", []string{"--bogus=1", pid}, "unrecognized option '--bogus=1'"},
				{"port too large", []string{"-t", "99999", pid}, "Invalid port specifier 99999"},
				{"range backwards", []string{"-t", "5-3", pid}, "Invalid port specifier 5-3"},
				{"not a port", []string{"-t", "abc", pid}, "Invalid port specifier abc"},
				{"mapping without a target", []string{"-t", "80:", pid}, "Invalid port specifier 80:"},
				{"all in pasta", []string{"-t", "all", pid}, "'all' port forwarding is only allowed for passt"},
				{"busy port", []string{"-t", fmt.Sprintf("127.0.0.1/%d", busyPort), pid},
					fmt.Sprintf("Failed to bind port %d (Address already in use) for option '-t 127.0.0.1/%d'", busyPort, busyPort)},
				{"not a namespace", []string{"--config-net", "-t", fmt.Sprint(free), "--netns", "/etc/hostname"}, ""},
				{"no such process", []string{"--config-net", "-t", fmt.Sprint(free), "999999999"}, ""},
			} {
				t.Run(c.name, func(t *testing.T) {
					ctx := testContext(t, 30*time.Second)
					var stderr bytes.Buffer
					cmd := root.command(ctx, []string{rootPath}, append([]string{peer.bin}, c.args...)...)
					cmd.Stderr = &stderr
					err := cmd.Run()
					var ee *exec.ExitError
					if !asExitError(err, &ee) || ee.ExitCode() != 1 {
						t.Errorf("pasta %s: %v, want exit status 1; stderr:\n%s", strings.Join(c.args, " "), err, stderr.String())
					}
					if !strings.Contains(stderr.String(), c.want) {
						t.Errorf("pasta %s: stderr:\n%s\nwant %q", strings.Join(c.args, " "), stderr.String(), c.want)
					}
					if c.want == "" && stderr.Len() == 0 {
						t.Errorf("pasta %s: failed without a word", strings.Join(c.args, " "))
					}
					// Nothing left: the port it was to forward is free.
					if l, err := net.Listen("tcp", fmt.Sprintf(":%d", free)); err != nil {
						t.Errorf("after pasta %s failed, port %d is taken: %v", strings.Join(c.args, " "), free, err)
					} else {
						l.Close()
					}
				})
			}
		})
	}
}

func asExitError(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*ee = e
	}
	return ok
}
