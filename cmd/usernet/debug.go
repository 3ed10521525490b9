//go:build usernet_debug

package main

// Debugging aids, compiled only into a binary built with
// `-tags usernet_debug` (test.sh and bench/run.sh build one beside the
// real binary): the usernet that ships reads no debug switch. They are not
// an interface; docs/cli.md lists them.
//
//	USERNET_DEBUG_NO_OFFLOAD=1     open the tap without IFF_VNET_HDR and offloads
//	USERNET_DEBUG_CPUPROFILE=FILE  CPU profile of the whole process while serving
//	USERNET_DEBUG_TRACE=FILE       execution trace (go tool trace -pprof=sched FILE)
//	USERNET_DEBUG_FS_PROBE=DIR     once running (sandboxed, if asked), try to change DIR
//	                               (write, create, remove, ...) and say how each went on
//	                               stderr: "usernet: debug fs-probe OP: ok|ERRNO"

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"

	"golang.org/x/sys/unix"
)

func debugNoOffload() bool { return os.Getenv("USERNET_DEBUG_NO_OFFLOAD") != "" }

// startDebugProfiles starts what the environment asks for and returns the
// function that stops it.
func startDebugProfiles(logf func(string, ...any)) func() {
	var stops []func()
	if path := os.Getenv("USERNET_DEBUG_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			logf("debug trace: %v", err)
		} else if err := trace.Start(f); err != nil {
			logf("debug trace: %v", err)
			f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	if path := os.Getenv("USERNET_DEBUG_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			logf("debug CPU profile: %v", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			logf("debug CPU profile: %v", err)
			f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	return func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}

// debugProbeFS tries, from the running (sandboxed) process, to change the
// directory USERNET_DEBUG_FS_PROBE names, which holds the files victim,
// to-unlink, to-rename and the directory sub, and reports each result on w.
// The sandbox tests look at the lines and at the directory afterwards.
func debugProbeFS(w io.Writer) {
	dir := os.Getenv("USERNET_DEBUG_FS_PROBE")
	if dir == "" {
		return
	}
	at := func(name string) string { return filepath.Join(dir, name) }
	try := func(op string, err error) {
		res := "ok"
		var errno unix.Errno
		if errors.As(err, &errno) {
			res = unix.ErrnoName(errno)
		} else if err != nil {
			res = err.Error()
		}
		fmt.Fprintf(w, "usernet: debug fs-probe %s: %s\n", op, res)
	}
	openClose := func(path string, flags int) error {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o600)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	try("read", openClose(at("victim"), unix.O_RDONLY))
	try("write", openClose(at("victim"), unix.O_WRONLY))
	try("truncate", unix.Truncate(at("victim"), 0))
	try("create", openClose(at("created"), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL))
	try("unlink", unix.Unlink(at("to-unlink")))
	try("rename", unix.Rename(at("to-rename"), at("renamed")))
	try("mkdir", unix.Mkdir(at("newdir"), 0o700))
	try("rmdir", unix.Rmdir(at("sub")))
	try("symlink", unix.Symlink("victim", at("symlink")))
	try("link", unix.Link(at("victim"), at("hardlink")))
	try("mkfifo", unix.Mkfifo(at("fifo"), 0o600))
}
