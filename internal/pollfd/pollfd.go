// Package pollfd waits for an event on a file descriptor that Go's runtime
// poller cannot wait on (pidfds, inherited fds of unknown kind), in a way
// that a context can cancel.
//
// It must not import any other usernet package.
package pollfd

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Wait blocks until fd reports any poll event (readable, hang-up, error) or
// ctx ends. It returns nil for an event on fd, ctx.Err() otherwise. fd is
// not closed. The calling goroutine is blocked in poll(2) meanwhile, woken by
// a self-pipe when ctx ends.
func Wait(ctx context.Context, fd int) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("pipe2: %w", err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	stop := context.AfterFunc(ctx, func() { unix.Write(p[1], []byte{0}) })
	defer stop()
	fds := []unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI},
		{Fd: int32(p[0]), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll fd %d: %w", fd, err)
		}
		if fds[0].Revents != 0 {
			return nil
		}
		if fds[1].Revents != 0 {
			return ctx.Err()
		}
	}
}

// IsOpen reports whether fd is an open file descriptor of this process.
func IsOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}
