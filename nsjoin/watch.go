package nsjoin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/internal/pollfd"
)

// Watch holds what is needed to notice that a target has gone away. Open it
// before OpenTap so that a PID reused meanwhile cannot fool it.
type Watch struct {
	pidfd int    // pid targets: a pidfd, readable once the process exits
	path  string // path targets: the namespace file
	dev   uint64
	ino   uint64
}

// pathPoll is how often a path target is checked besides the inotify
// watch on its directory, which sees the file removed (Podman's teardown)
// at once but not a namespace unmounted or replaced in place.
var pathPoll = time.Second

// NewWatch opens the watch for t. A path under /proc/PID/ is watched as
// PID is: the file goes when the process does (and a stat of it cannot
// work in the sandbox, which has no /proc).
func NewWatch(t Target) (*Watch, error) {
	if pid := procPID(t.NetnsPath); pid > 0 {
		t = Target{PID: pid}
	}
	if t.NetnsPath == "" {
		fd, err := unix.PidfdOpen(t.PID, 0)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("%s: no such process %d", t, t.PID)
			}
			return nil, fmt.Errorf("watch process %d: %w", t.PID, err)
		}
		return &Watch{pidfd: fd}, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(t.NetnsPath, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: t.NetnsPath, Err: err}
	}
	return &Watch{pidfd: -1, path: t.NetnsPath, dev: st.Dev, ino: st.Ino}, nil
}

// procPID returns N for a path /proc/N/..., else 0.
func procPID(path string) int {
	rest, ok := strings.CutPrefix(filepath.Clean(path), "/proc/")
	if !ok {
		return 0
	}
	n, _, _ := strings.Cut(rest, "/")
	pid, err := strconv.Atoi(n)
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// WatchState describes a Watch to a re-execution of this process that
// inherits its pidfd (the sandbox: cmd/usernet/sandbox.go). A path target's
// file must stay visible at the same path there.
type WatchState struct {
	PidFD int    // -1: a path target
	Path  string `json:",omitempty"`
	Dev   uint64 `json:",omitempty"`
	Ino   uint64 `json:",omitempty"`
}

// State returns the watch's description and the fd to inherit under the
// same number (-1: none).
func (w *Watch) State() (WatchState, int) {
	return WatchState{PidFD: w.pidfd, Path: w.path, Dev: w.dev, Ino: w.ino}, w.pidfd
}

// WatchFromState rebuilds, in a re-executed process, the watch State
// described. It takes ownership of the inherited pidfd.
func WatchFromState(s WatchState) (*Watch, error) {
	if (s.PidFD >= 0) == (s.Path != "") {
		return nil, errors.New("target watch: bad inherited state")
	}
	if s.PidFD >= 0 {
		if !pollfd.IsOpen(s.PidFD) {
			return nil, fmt.Errorf("target watch: inherited pidfd %d is not open", s.PidFD)
		}
		unix.CloseOnExec(s.PidFD)
	}
	return &Watch{pidfd: s.PidFD, path: s.Path, dev: s.Dev, ino: s.Ino}, nil
}

// Close releases the watch.
func (w *Watch) Close() error {
	if w.pidfd >= 0 {
		fd := w.pidfd
		w.pidfd = -1
		return unix.Close(fd)
	}
	return nil
}

// Wait returns nil once the target is gone (the process exited, or the
// namespace file was removed or now names another namespace), or ctx.Err().
func (w *Watch) Wait(ctx context.Context) error {
	if w.pidfd >= 0 {
		return pollfd.Wait(ctx, w.pidfd)
	}
	// The ports of a namespace whose file is gone must be free at once:
	// Podman removes the file and may start the next container on the
	// same ports right away. Without inotify, polling alone does.
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err == nil {
		defer unix.Close(in)
		if _, err := unix.InotifyAddWatch(in, filepath.Dir(w.path), unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF); err != nil {
			unix.Close(in)
			in = -1
		}
	} else {
		in = -1
	}
	buf := make([]byte, 4096)
	for {
		if w.gone() {
			return nil
		}
		tctx, cancel := context.WithTimeout(ctx, pathPoll)
		if in >= 0 {
			pollfd.Wait(tctx, in)
			for {
				// Drain the events; which file they name does not
				// matter, gone() looks at ours.
				if n, err := unix.Read(in, buf); n <= 0 || err != nil {
					break
				}
			}
		} else {
			<-tctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// gone reports whether a path target's file is removed or names another
// file than the one watched.
func (w *Watch) gone() bool {
	var st unix.Stat_t
	return unix.Stat(w.path, &st) != nil || st.Dev != w.dev || st.Ino != w.ino
}
