package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// TestPastaRunAs: started as root, pasta becomes the --runas user once its ports are bound
// (a privileged port among them), or nobody without --runas, as the real pasta does; a
// --runas that names no one is pasta's error. The peers run as root (the suite's user),
// the target is the test user's, as a rootless container's would be.
func TestPastaRunAs(t *testing.T) {
	root := needTrixie(t)
	u, err := user.Lookup(testUser)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			peer := newPastaPeer(t, root, name)
			for _, c := range []struct {
				name     string
				args     []string
				uid, gid string
				warn     string
			}{
				{"login", []string{"--runas", testUser}, u.Uid, u.Gid, ""},
				{"uid:gid", []string{"--runas", u.Uid + ":" + u.Gid}, u.Uid, u.Gid, ""},
				{"nobody", nil, "65534", "65534", "Started as root, will change to nobody."},
			} {
				t.Run(c.name, func(t *testing.T) {
					ctx := testContext(t, 30*time.Second)
					tg := newTarget(t)
					dir := t.TempDir() // root's: pasta opens it without CAP_DAC_OVERRIDE
					pidFile := filepath.Join(dir, "pasta.pid")
					port := 80 // privileged: bound before the switch
					if l, err := net.Listen("tcp", ":80"); err != nil {
						port = freePort(t, "tcp")
					} else {
						l.Close()
					}
					args := append([]string{root.dir, "--", peer.bin}, c.args...)
					args = append(args, "-t", fmt.Sprint(port), "-u", "none", "-T", "none", "-U", "none", "-P", pidFile, fmt.Sprint(tg.pid))
					cmd := exec.CommandContext(ctx, trixieExec, args...)
					cmd.Env = []string{rootPath}
					var stderr bytes.Buffer
					cmd.Stderr = &stderr
					err := cmd.Run()
					if c.args == nil && !peer.isUsernet {
						// pasta becomes nobody before it joins the target's
						// namespaces, which nobody may not: it fails after the
						// warning. usernet joins first (docs/pasta.md).
						if err == nil || !strings.Contains(stderr.String(), c.warn) {
							t.Errorf("pasta as root without --runas: %v; stderr:\n%s\nwant a failure after %q", err, stderr.String(), c.warn)
						}
						return
					}
					if err != nil {
						t.Fatalf("pasta %s: %v; stderr:\n%s", strings.Join(c.args, " "), err, stderr.String())
					}
					b, err := os.ReadFile(pidFile)
					if err != nil {
						t.Fatal(err)
					}
					pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
					if pid <= 0 {
						t.Fatalf("PID file %q", b)
					}
					t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
					status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
					if err != nil {
						t.Fatal(err)
					}
					for _, w := range []string{
						fmt.Sprintf("Uid:\t%s\t%[1]s\t%[1]s\t%[1]s\n", c.uid),
						fmt.Sprintf("Gid:\t%s\t%[1]s\t%[1]s\t%[1]s\n", c.gid),
						"Groups:\t \n",
					} {
						if !strings.Contains(string(status), w) && !(strings.HasPrefix(w, "Groups") && strings.Contains(string(status), "Groups:\t\n")) {
							t.Errorf("/proc/%d/status lacks %q:\n%s", pid, w, status)
						}
					}
					if !strings.Contains(stderr.String(), c.warn) {
						t.Errorf("stderr %q, want %q", stderr.String(), c.warn)
					}
					if l, err := net.Listen("tcp", fmt.Sprintf(":%d", port)); err == nil {
						l.Close()
						t.Errorf("port %d is not bound", port)
					}
				})
			}
			t.Run("invalid", func(t *testing.T) {
				ctx := testContext(t, 30*time.Second)
				cmd := exec.CommandContext(ctx, trixieExec, root.dir, "--", peer.bin, "--runas", "no-such-user-here", "-t", "none", "1")
				cmd.Env = []string{rootPath}
				out, err := cmd.CombinedOutput()
				var ee *exec.ExitError
				if !asExitError(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "Invalid --runas option: no-such-user-here") {
					t.Errorf("--runas no-such-user-here: %v; output %q; want exit 1 and pasta's message", err, out)
				}
			})
		})
	}
}

// TestPastaSpawnTerm: pasta running a command of its own ends at once on SIGTERM, exit
// status 0 (passt.c's exit handler), and leaves the command running without a network; it
// does not pass the signal on or wait for the command.
func TestPastaSpawnTerm(t *testing.T) {
	root := needTrixie(t)
	for i, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			peer := newPastaPeer(t, root, name)
			ctx := testContext(t, 30*time.Second)
			// pasta runs the command in a PID namespace of its own: found by its
			// arguments, not its $$. Its output goes elsewhere, so that its pipes do
			// not keep cmd.Wait waiting.
			sleep := fmt.Sprintf("sleep 29.%d%d", os.Getpid()%1000, i)
			cmd := root.command(ctx, []string{rootPath, "HOME=/tmp"}, peer.bin, "-f", "--config-net",
				"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--", "sh", "-c", "echo up; exec "+sleep+" >/dev/null 2>&1")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { exec.Command("pkill", "-KILL", "-f", sleep).Run() })
			var up string
			if _, err := fmt.Fscan(out, &up); err != nil || up != "up" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the command did not start: %v; stderr:\n%s", err, stderr.String())
			}
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("pasta after SIGTERM: %v, want exit status 0; stderr:\n%s", err, stderr.String())
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("pasta still running 10 s after SIGTERM; stderr:\n%s", stderr.String())
			}
			if err := exec.Command("pgrep", "-f", sleep).Run(); err != nil {
				t.Errorf("the command (%s) is gone after pasta's SIGTERM: %v", sleep, err)
			}
		})
	}
}
