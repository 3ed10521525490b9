package main

/*
int usernet_catch_stop(int fd);
void usernet_release_stop(void);
*/
import "C"

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopContext returns a context that ends on SIGINT or SIGTERM, and the
// function that gives the two signals their default action again. A
// handler of stopsig.c's writes to an eventfd that a goroutine waits for
// in the poller; os/signal, which would keep three threads for it, only if
// that cannot be set up. After stop the goroutine stays parked and the
// eventfd open, for a handler that may still be running: the process is
// about to exit.
func stopContext() (context.Context, func()) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	}
	if e := C.usernet_catch_stop(C.int(efd)); e != 0 {
		C.usernet_release_stop()
		unix.Close(efd)
		return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	}
	f := os.NewFile(uintptr(efd), "stop-eventfd") // nonblocking: read in the poller
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		var n [8]byte
		if _, err := f.Read(n[:]); err == nil {
			cancel()
		}
	}()
	return ctx, func() {
		C.usernet_release_stop()
		cancel()
	}
}
