package stack

import "sync"

// tracker counts goroutines that belong to the Stack. Once closed it
// refuses new members, so closeAndWait cannot miss one.
type tracker struct {
	mu     sync.Mutex
	closed bool // guarded by mu
	wg     sync.WaitGroup
}

// enter registers one member; false means the tracker is closed.
func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) leave() { t.wg.Done() }

// goFunc runs f on a new tracked goroutine; false means the tracker is
// closed and f did not run.
func (t *tracker) goFunc(f func()) bool {
	if !t.enter() {
		return false
	}
	go func() {
		defer t.leave()
		f()
	}()
	return true
}

func (t *tracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}
