package nsjoin

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// pathPoll is how often a path target is checked. A netns file has no event
// to wait on; a stat a second costs nothing.
const pathPoll = time.Second

// NewWatch opens the watch for t.
func NewWatch(t Target) (*Watch, error) {
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
	t := time.NewTicker(pathPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		var st unix.Stat_t
		if err := unix.Stat(w.path, &st); err != nil || st.Dev != w.dev || st.Ino != w.ino {
			return nil
		}
	}
}
