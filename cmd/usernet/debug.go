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
//	USERNET_DEBUG_MEMSTATS=FILE    every 250 ms a line of the runtime's memory classes and RSS,
//	                               each second the largest resident mappings
//	USERNET_DEBUG_MEMSTATS_HEAP=N  with it, a heap profile of every allocation each second, N times
//	USERNET_DEBUG_PROCS=1          log internal/procs's samples while it adapts GOMAXPROCS
//	USERNET_DEBUG_FS_PROBE=DIR     once running (sandboxed, if asked), try to change DIR
//	                               (write, create, remove, ...) and say how each went on
//	                               stderr: "usernet: debug fs-probe OP: ok|ERRNO"

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/internal/procs"
)

// debugProcsTrace logs the samples of internal/procs (USERNET_DEBUG_PROCS):
// those that saw goroutines wait, and every change.
func debugProcsTrace(logf func(string, ...any)) func(procs.Sample) {
	if os.Getenv("USERNET_DEBUG_PROCS") == "" {
		return nil
	}
	last := 1
	return func(s procs.Sample) {
		if s.Waiting >= 0.01 || s.Procs != last {
			logf("debug procs: waiting %.3f procs %d", s.Waiting, s.Procs)
		}
		last = s.Procs
	}
}

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
	if path := os.Getenv("USERNET_DEBUG_MEMSTATS"); path != "" {
		if stop, err := debugMemStats(path); err != nil {
			logf("debug memstats: %v", err)
		} else {
			stops = append(stops, stop)
		}
	}
	return func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}

// debugMemStats writes to path, every 250 ms until the returned function
// is called, the process's resident pages (anonymous and file, from
// /proc/self/status: opened now, as the sandbox may forbid it later) and
// the runtime's memory classes, in KiB: where the RSS of a burst stays.
func debugMemStats(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	status, err := os.Open("/proc/self/status")
	if err != nil {
		f.Close()
		return nil, err
	}
	// USERNET_DEBUG_MEMSTATS_HEAP=N: also a heap profile of every
	// allocation each second for N seconds, to path.heap.SEC (made now).
	var heaps []*os.File
	if n, _ := strconv.Atoi(os.Getenv("USERNET_DEBUG_MEMSTATS_HEAP")); n > 0 {
		runtime.MemProfileRate = 1
		for i := range n {
			h, err := os.Create(fmt.Sprintf("%s.heap.%d", path, i))
			if err != nil {
				break
			}
			heaps = append(heaps, h)
		}
	}
	smaps, _ := os.Open("/proc/self/smaps")
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") || d.Name == "/gc/heap/live:bytes" || d.Name == "/gc/cycles/total:gc-cycles" || d.Name == "/sched/goroutines:goroutines" {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	fmt.Fprintf(f, "t_ms rss_anon rss_file")
	for _, s := range samples {
		fmt.Fprintf(f, " %s", strings.TrimSuffix(strings.TrimPrefix(s.Name, "/memory/classes/"), ":bytes"))
	}
	fmt.Fprintln(f)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer f.Close()
		defer status.Close()
		start := time.Now()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		buf := make([]byte, 4096)
		for tick := 0; ; tick++ {
			if tick%4 == 0 && tick/4 < len(heaps) {
				pprof.Lookup("heap").WriteTo(heaps[tick/4], 0)
				heaps[tick/4].Close()
			}
			n, _ := status.ReadAt(buf, 0)
			anon, file := statusKiB(buf[:n], "RssAnon:"), statusKiB(buf[:n], "RssFile:")
			metrics.Read(samples)
			fmt.Fprintf(f, "%d %d %d", time.Since(start).Milliseconds(), anon, file)
			for _, s := range samples {
				v := s.Value.Uint64()
				if strings.HasSuffix(s.Name, ":bytes") {
					v >>= 10
				}
				fmt.Fprintf(f, " %d", v)
			}
			fmt.Fprintln(f)
			if smaps != nil && tick%4 == 0 {
				debugSmaps(f, smaps)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }, nil
}

// debugSmaps writes, each on a line starting with "#", the mappings of
// smaps with more than 64 KiB resident.
func debugSmaps(w io.Writer, smaps *os.File) {
	b, _ := io.ReadAll(io.NewSectionReader(smaps, 0, 1<<30))
	var head string
	for line := range strings.Lines(string(b)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			head = strings.TrimSpace(line)
			continue
		}
		if fields[0] == "Rss:" && len(fields) > 1 {
			if v, _ := strconv.Atoi(fields[1]); v > 64 {
				fmt.Fprintf(w, "# %d %s\n", v, head)
			}
		}
	}
}

// statusKiB returns the KiB figure of a /proc/PID/status field.
func statusKiB(status []byte, field string) uint64 {
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, field); ok {
			v, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
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
