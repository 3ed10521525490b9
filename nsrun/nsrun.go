// Package nsrun starts a command in new user, network and mount namespaces
// for `usernet run`. The command is held at a barrier until the network is
// ready, then its /etc/resolv.conf is replaced (in its own mount namespace
// only) and it is executed.
//
// It owns the command's process until it execs. It must not import gVisor
// or any other usernet package.
package nsrun

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	envInit   = "_USERNET_RUN_INIT"
	envResolv = "_USERNET_RUN_RESOLV"
	initFD    = 3 // the barrier pipe's read end in the child
)

// Child is a command waiting in its new namespaces.
type Child struct {
	cmd     *exec.Cmd
	release *os.File // write end of the barrier; closing it without a byte aborts
	dir     string   // holds the resolv.conf the child binds
}

// Start creates the namespaces and the process that will run argv in them.
// resolvConf, when not empty, becomes the command's /etc/resolv.conf. The
// command is killed when this process ends, unless outlive is set (pasta's
// way: its command goes on without a network).
func Start(argv []string, resolvConf string, outlive bool) (*Child, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command to run")
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return nil, fmt.Errorf("command %q: %w", argv[0], err)
	}
	c := &Child{}
	env := []string{envInit + "=1"}
	if resolvConf != "" {
		dir, err := os.MkdirTemp("", "usernet-run-")
		if err != nil {
			return nil, fmt.Errorf("create resolv.conf directory: %w", err)
		}
		c.dir = dir
		p := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(p, []byte(resolvConf), 0o644); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
		env = append(env, envResolv+"="+p)
	}
	r, w, err := os.Pipe()
	if err != nil {
		c.cleanup()
		return nil, fmt.Errorf("barrier pipe: %w", err)
	}
	defer r.Close()
	c.release = w
	cmd := exec.Command("/proc/self/exe", argv...)
	cmd.Args = append([]string{argv[0]}, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{r}
	cmd.Env = append(cleanEnv(os.Environ()), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		// The caller becomes root in the new user namespace, as with
		// `unshare --map-root-user`: that gives the command (and the
		// nsjoin child) CAP_NET_ADMIN over its network namespace.
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
		Pdeathsig:                  syscall.SIGKILL,
	}
	if outlive {
		cmd.SysProcAttr.Pdeathsig = 0
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		c.cleanup()
		return nil, fmt.Errorf("create namespaces: %w", err)
	}
	c.cmd = cmd
	return c, nil
}

// PID of the child: its namespaces are the ones to serve.
func (c *Child) PID() int { return c.cmd.Process.Pid }

// Release lets the command run.
func (c *Child) Release() error {
	_, err := c.release.Write([]byte{1})
	c.release.Close()
	if err != nil {
		return fmt.Errorf("release command: %w", err)
	}
	return nil
}

// Leave removes what Start made and leaves the command running.
func (c *Child) Leave() {
	c.release.Close()
	c.cleanup()
}

// Signal forwards sig to the command.
func (c *Child) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Wait waits for the command and returns its exit code the way a shell
// reports it (128+N when killed by signal N). It removes what Start made.
func (c *Child) Wait() (int, error) {
	c.release.Close() // a child still at the barrier exits quietly
	err := c.cmd.Wait()
	c.cleanup()
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 1, fmt.Errorf("wait for command: %w", err)
}

func (c *Child) cleanup() {
	if c.dir != "" {
		os.RemoveAll(c.dir)
		c.dir = ""
	}
}

// IsInit reports whether this process is the child made by Start.
func IsInit() bool { return os.Getenv(envInit) == "1" }

// InitMain runs in the child: it waits at the barrier, binds resolv.conf and
// executes the command. It returns only on failure, with the exit code.
func InitMain() int {
	barrier := os.NewFile(initFD, "barrier")
	var b [1]byte
	if n, _ := barrier.Read(b[:]); n != 1 {
		return 1 // usernet failed before the network was ready; it said why
	}
	barrier.Close()
	if p := os.Getenv(envResolv); p != "" {
		if err := bindResolvConf(p); err != nil {
			fmt.Fprintf(os.Stderr, "usernet run: warning: %v; the command keeps the host's resolv.conf\n", err)
		}
	}
	argv := os.Args[1:]
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "usernet run: %v\n", err)
		return 127
	}
	env := cleanEnv(os.Environ())
	err = unix.Exec(path, argv, env)
	fmt.Fprintf(os.Stderr, "usernet run: exec %s: %v\n", path, err)
	return 126
}

func bindResolvConf(src string) error {
	// Our mounts must not propagate back to the caller's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	dst := "/etc/resolv.conf"
	if real, err := filepath.EvalSymlinks(dst); err == nil {
		dst = real
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s over %s: %w", src, dst, err)
	}
	return nil
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "_USERNET_") {
			out = append(out, e)
		}
	}
	return out
}
