package sandbox

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel test runs the real thing in a child: the test binary re-executed
// by Exec, sandboxed by the constructor (sandbox.c), with the Go runtime
// (and, under -race, the race runtime) running under the filter. The child
// reports what it sees and which syscalls fail, then waits for the parent
// to look at it from outside.

const envTestExec = "SANDBOX_TEST_EXEC" // JSON Config: call Exec with the inherited fd 3 (a listener)

func TestMain(m *testing.M) {
	switch {
	case Resumed():
		os.Exit(resumedChild())
	case os.Getenv(envTestExec) != "":
		var c Config
		if err := json.Unmarshal([]byte(os.Getenv(envTestExec)), &c); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Unsetenv(envTestExec)
		err := Exec(c, []byte(`{"Listener":3}`), 3)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// childReport is what the sandboxed child found.
type childReport struct {
	ResumeErr string
	Calls     map[string]string // operation → "" (it worked) or the errno name
	Accepted  string            // the carried listener: what the peer sent
}

// fsProbes change the test's directory (writable for the sandbox, or the
// user's own with seccomp alone): nothing of it may change under the
// filter or Landlock. Each is tried by the child; victim, to-unlink,
// to-rename, sub and the socket exist beforehand.
var fsProbes = []string{
	"write a file", "truncate a file", "create a file", "unlink a file", "unlink the socket",
	"mkdir", "rmdir", "rename a file", "symlink", "hard link", "mkfifo",
}

func tryFSProbes(dir, sock string, try func(string, func() error)) {
	victim := filepath.Join(dir, "victim")
	try("write a file", func() error {
		fd, err := unix.Open(victim, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			_, err = unix.Write(fd, []byte("changed"))
			unix.Close(fd)
		}
		return err
	})
	try("truncate a file", func() error { return unix.Truncate(victim, 0) })
	try("create a file", func() error {
		fd, err := unix.Open(filepath.Join(dir, "created"), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		unix.Close(fd)
		return err
	})
	try("unlink a file", func() error { return unix.Unlink(filepath.Join(dir, "to-unlink")) })
	try("unlink the socket", func() error { return unix.Unlink(sock) })
	try("mkdir", func() error { return unix.Mkdir(filepath.Join(dir, "newdir"), 0o700) })
	try("rmdir", func() error { return unix.Rmdir(filepath.Join(dir, "sub")) })
	try("rename a file", func() error { return unix.Rename(filepath.Join(dir, "to-rename"), filepath.Join(dir, "renamed")) })
	try("symlink", func() error { return unix.Symlink("victim", filepath.Join(dir, "link")) })
	try("hard link", func() error { return unix.Link(victim, filepath.Join(dir, "hardlink")) })
	try("mkfifo", func() error { return unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600) })
}

func errName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

func resumedChild() int {
	var r childReport
	state, err := Resume()
	if err != nil {
		r.ResumeErr = err.Error()
		json.NewEncoder(os.Stdout).Encode(r)
		return 0
	}
	var carried struct{ Listener int }
	json.Unmarshal(state, &carried)

	r.Calls = map[string]string{}
	try := func(name string, fn func() error) { r.Calls[name] = errName(fn()) }
	try("socket AF_INET", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		unix.Close(fd)
		return err
	})
	try("socket AF_UNIX", func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		unix.Close(fd)
		return err
	})
	try("socket AF_NETLINK", func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		unix.Close(fd)
		return err
	})
	try("open /etc/hosts", func() error {
		fd, err := unix.Open("/etc/hosts", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		return err
	})
	try("open a file of a Read directory", func() error {
		fd, err := unix.Open(filepath.Join(filepath.Dir(os.Getenv("SANDBOX_TEST_SOCK")), "readable"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		return err
	})
	try("open /etc/hosts to write", func() error {
		fd, err := unix.Open("/etc/hosts", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		return err
	})
	try("create /tmp/x", func() error {
		fd, err := unix.Open("/tmp/usernet-sandbox-test-must-not-exist", unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		unix.Close(fd)
		return err
	})
	try("unshare CLONE_NEWNS", func() error { return unix.Unshare(unix.CLONE_NEWNS) })
	try("kill parent 0", func() error { return unix.Kill(os.Getppid(), 0) })
	try("kill self 0", func() error { return unix.Kill(os.Getpid(), 0) })
	try("ioctl TIOCGWINSZ", func() error { _, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ); return err })
	try("execve", func() error { return syscall.Exec("/proc/self/exe", []string{"x"}, nil) })
	try("start a process", func() error { return exec.Command("/proc/self/exe").Start() })

	// The carried listener: one connection. Then try to change the
	// socket's directory (under /tmp, bound writable into the sandbox).
	f := os.NewFile(uintptr(carried.Listener), "listener")
	if ln, err := net.FileListener(f); err != nil {
		r.Accepted = "FileListener: " + err.Error()
	} else {
		f.Close()
		ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
		if c, err := ln.Accept(); err != nil {
			r.Accepted = "accept: " + err.Error()
		} else {
			b, _ := io.ReadAll(io.LimitReader(c, 64))
			r.Accepted = string(b)
			c.Close()
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
	}
	sock := os.Getenv("SANDBOX_TEST_SOCK")
	tryFSProbes(filepath.Dir(sock), sock, try)

	json.NewEncoder(os.Stdout).Encode(r)
	io.Copy(io.Discard, os.Stdin) // the parent looks at /proc/PID until it closes stdin
	return 0
}

// dirState is dir's entries with their type and content.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range es {
		var b []byte
		if e.Type().IsRegular() { // not the fifo a probe may make
			b, _ = os.ReadFile(filepath.Join(dir, e.Name()))
		}
		m[e.Name()] = e.Type().String() + " " + string(b)
	}
	return m
}

func status(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestSandboxedChild runs a re-executed child in each configuration and
// checks, from inside and outside, what the flags promise.
func TestSandboxedChild(t *testing.T) {
	// "read" stands for a Config.Read of the test's directory, which
	// holds the file "readable".
	read := []string{"read"}
	for _, c := range []Config{{Mounts: true, Seccomp: true}, {Seccomp: true}, {Mounts: true},
		{Mounts: true, Seccomp: true, ConfineFS: true, Read: read}, {Seccomp: true, ConfineFS: true, Read: read},
		{Mounts: true, ConfineFS: true, Read: read}, {Mounts: true, ConfineFS: true}, {ConfineFS: true, Read: read}} {
		t.Run(fmt.Sprintf("mounts=%v,seccomp=%v,confine=%v,read=%v", c.Mounts, c.Seccomp, c.ConfineFS, len(c.Read) > 0), func(t *testing.T) {
			if c.Seccomp && !SeccompSupported() {
				t.Skip(ErrArch)
			}
			if c.ConfineFS && !LandlockSupported() {
				t.Skip("no Landlock in this kernel")
			}
			t.Parallel()
			dir := t.TempDir()
			for _, name := range []string{"readable", "victim", "to-unlink", "to-rename"} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte("yes"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			if len(c.Read) > 0 {
				c.Read = []string{dir}
			}
			sock := filepath.Join(dir, "api.sock")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ln.SetUnlinkOnClose(false)
			before := dirState(t, dir)
			lnFile, err := ln.File()
			if err != nil {
				t.Fatal(err)
			}
			defer lnFile.Close()
			if c.Mounts {
				c.Binds = []Bind{{Path: dir, Writable: true}, {Path: "/usr/share"}}
			}

			cfg, _ := json.Marshal(c)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), envTestExec+"="+string(cfg), "SANDBOX_TEST_SOCK="+sock)
			cmd.ExtraFiles = []*os.File{lnFile}
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				stdin.Close()
				cmd.Process.Kill()
				cmd.Wait()
			}()
			pid := cmd.Process.Pid

			conn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatalf("connect to the listener the child inherited: %v", err)
			}
			io.WriteString(conn, "hello from the parent")
			conn.Close()

			line, err := bufio.NewReader(stdout).ReadBytes('\n')
			if err != nil {
				t.Fatalf("child report: %v (%q)", err, line)
			}
			var r childReport
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("child report %q: %v", line, err)
			}
			if r.ResumeErr != "" {
				t.Fatalf("Resume in the child: %s", r.ResumeErr)
			}
			if r.Accepted != "hello from the parent" {
				t.Errorf("carried listener: accepted %q; want the parent's message", r.Accepted)
			}
			// The file system: the filter refuses every call that changes
			// it (EPERM) before Landlock (EACCES) would; without either,
			// the writable bind is writable.
			wantFS := map[bool]string{true: "EACCES", false: ""}[c.ConfineFS]
			if c.Seccomp {
				wantFS = "EPERM"
			}
			for _, op := range fsProbes {
				if got, ok := r.Calls[op]; !ok || got != wantFS {
					t.Errorf("%s in the test's directory: %q (tried: %v); want %q", op, got, ok, wantFS)
				}
			}
			if after := dirState(t, dir); wantFS != "" && !maps.Equal(before, after) {
				t.Errorf("the test's directory changed under the sandbox:\n before %v\n after  %v", before, after)
			}

			var root []string
			es, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/root")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				root = append(root, e.Name())
			}
			if c.Mounts {
				top := strings.Split(dir, "/")[1] // "tmp"
				if want := []string{"etc", "run", top, "usr"}; !slices.Equal(root, want) {
					t.Errorf("the child's root holds %q; want %q (/etc, /run and the two binds)", root, want)
				}
				ro := "/proc/" + strconv.Itoa(pid) + "/root/usr/share"
				if err := unix.Access(ro, unix.W_OK); !errors.Is(err, unix.EROFS) {
					t.Errorf("write access to the read-only bind %s: %v; want EROFS", ro, err)
				}
				if got, want := status(t, "/proc/"+strconv.Itoa(pid)+"/status")["Name"], filepath.Base(os.Args[0]); got != want[:min(len(want), 15)] {
					t.Errorf("process name %q; want %q as before the re-execution", got, want)
				}
			} else if !slices.Contains(root, "proc") {
				t.Errorf("the child's root holds %q; want the host's (seccomp alone)", root)
			}
			if c.Seccomp {
				want := map[string]string{
					"socket AF_INET":                  "",
					"socket AF_UNIX":                  "EPERM",
					"socket AF_NETLINK":               "EPERM",
					"open /etc/hosts":                 "EPERM",
					"open a file of a Read directory": "EPERM",
					"open /etc/hosts to write":        "EPERM",
					"create /tmp/x":                   "EPERM",
					"unshare CLONE_NEWNS":             "EPERM",
					"kill parent 0":                   "EPERM",
					"kill self 0":                     "",
					"ioctl TIOCGWINSZ":                "EPERM",
					"execve":                          "EPERM",
					"start a process":                 "", // any error: checked below
				}
				if len(c.Read) > 0 {
					// The filter lets reads through, Landlock only those of Read.
					want["open /etc/hosts"] = "EACCES"
					want["open a file of a Read directory"] = ""
				}
				for op, w := range want {
					got, ok := r.Calls[op]
					switch {
					case !ok:
						t.Errorf("%s: not tried", op)
					case op == "start a process":
						if got == "" {
							t.Errorf("%s under the filter: worked; want an error", op)
						}
					case got != w:
						t.Errorf("%s under the filter: %q; want %q", op, got, w)
					}
				}
			}

			if c.ConfineFS {
				// Landlock, with or without the filter: reading only in Read.
				inRead := map[bool]string{true: "", false: "EACCES"}[len(c.Read) > 0]
				for op, w := range map[string]string{"open /etc/hosts": "EACCES", "open a file of a Read directory": inRead} {
					if got := r.Calls[op]; got != w {
						t.Errorf("%s with Read: %q; want %q", op, got, w)
					}
				}
			}

			st := status(t, "/proc/"+strconv.Itoa(pid)+"/status")
			if st["NoNewPrivs"] != "1" {
				t.Errorf("NoNewPrivs %q; want 1", st["NoNewPrivs"])
			}
			if c.Mounts && (st["CapEff"] != "0000000000000400" || st["CapBnd"] != "0000000000000400") {
				t.Errorf("CapEff %s, CapBnd %s; want CAP_NET_BIND_SERVICE only", st["CapEff"], st["CapBnd"])
			}
			tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
			for _, task := range tasks {
				want := map[bool]string{true: "2", false: "0"}[c.Seccomp]
				if got := status(t, task)["Seccomp"]; got != want {
					t.Errorf("%s: Seccomp %q; want %q", task, got, want)
				}
			}
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("child: %v", err)
			}
		})
	}
}

// TestResumeReportsFailure: a sandbox the constructor could not enter is
// reported by Resume, not silently skipped. A bad filter stands in for any
// failing step.
func TestResumeReportsFailure(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envOn+"=1", envBPF+"=zz", envState+"={}")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var r childReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("child report %q: %v", out, err)
	}
	if want := "sandbox: decode the seccomp filter: invalid argument"; r.ResumeErr != want {
		t.Fatalf("Resume with a bad filter: %q; want %q", r.ResumeErr, want)
	}
}
