package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A pasta-style invocation without --foreground returns once the network
// is ready and leaves the work to a background process, as pasta does:
// Podman and rootlesskit 2.3 wait for that exit, and read it as "ready".
// Go cannot fork, so the foreground process starts this program again
// with detachEnv set and a pipe as fd 3 (detach); the background process
// (its own session, stdin and stdout on /dev/null) sends its errors to
// the foreground's stderr until it is ready, then closes everything it
// shares with the caller and writes "1" to the pipe (detachedReady).

// detachEnv marks the background process; its value is the pipe's fd.
const detachEnv = "USERNET_DETACHED_FD"

// detachedFD is the pipe's fd in the background process.
const detachedFD = 3

// isDetached reports whether this process is the background one. The
// pipe is not passed on to the processes it starts (the socket broker).
func isDetached() bool {
	if os.Getenv(detachEnv) == "" {
		return false
	}
	unix.CloseOnExec(detachedFD)
	return true
}

// detach starts the background process and waits until it is ready (then
// writes its PID to pidFile, if set, and returns 0) or has failed (its
// errors are on stderr; 1).
func detach(pidFile string, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "usernet: starting in the background: %v\n", err)
		return 1
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	defer readyR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return fail(err)
	}
	defer errR.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		readyW.Close()
		errW.Close()
		return fail(err)
	}
	defer devnull.Close()

	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Args[0] = os.Args[0] // pasta mode is chosen by the name it was called by
	cmd.Env = append(os.Environ(), detachEnv+"="+strconv.Itoa(detachedFD))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, errW
	cmd.ExtraFiles = []*os.File{readyW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	errW.Close()
	if err != nil {
		return fail(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(stderr, errR) })

	var b [1]byte
	n, _ := readyR.Read(b[:])
	if n == 1 && b[0] == '1' {
		wg.Wait() // the background process closed its stderr before saying so
		if pidFile != "" {
			if err := writePIDFile(pidFile, cmd.Process.Pid); err != nil {
				fmt.Fprintf(stderr, "usernet: %v\n", err)
				cmd.Process.Kill()
				return 1
			}
		}
		cmd.Process.Release()
		return 0
	}
	// It failed before it was ready: its errors are on stderr.
	err = cmd.Wait()
	wg.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return ee.ExitCode()
	}
	return 1
}

// openLogTarget opens where the background process's stdout and stderr
// go once it is ready: logFile, or /dev/null. It is opened early, before
// the sandbox, which would not let it.
func openLogTarget(logFile string) (*os.File, error) {
	target := os.DevNull
	flags := os.O_WRONLY
	if logFile != "" {
		target, flags = logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND
	}
	f, err := os.OpenFile(target, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

// detachedReady, in the background process, lets the foreground one
// return: stdout and stderr, the caller's pipes, go to target (from
// openLogTarget) first, so that nothing holds them open.
func detachedReady(target *os.File) error {
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(int(target.Fd()), fd, 0); err != nil {
			return fmt.Errorf("redirect fd %d: %w", fd, err)
		}
	}
	ready := os.NewFile(detachedFD, "ready")
	defer ready.Close()
	if _, err := ready.Write([]byte("1")); err != nil {
		return fmt.Errorf("tell the foreground process: %w", err)
	}
	return nil
}

// writePIDFile writes pid as pasta does ("%d\n"), replacing the file.
func writePIDFile(path string, pid int) error {
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("PID file: %w", err)
	}
	return nil
}
