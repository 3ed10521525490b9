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
// not closed. The calling goroutine is blocked in poll(2) meanwhile, woken
// through an eventfd when ctx ends.
//
// The eventfd is Wait's own for the whole call: the cancellation writes to
// it only while Wait has not returned (Wait waits for a wake-up already
// under way before it closes the eventfd), so a wake-up never lands in an
// fd number that was closed and given to someone else meanwhile.
func Wait(ctx context.Context, fd int) error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(efd)
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		var one = [8]byte{1}
		unix.Write(efd, one[:])
	})
	defer func() {
		if !stop() {
			<-woken // the wake-up started: let it finish before efd closes
		}
	}()
	fds := []unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI},
		{Fd: int32(efd), Events: unix.POLLIN},
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
