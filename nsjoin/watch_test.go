package nsjoin

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A path target's removal is seen through inotify, not the next poll:
// with polling made hourly, Wait must still return once the file goes.
func TestWatchPathRemovedSeenAtOnce(t *testing.T) {
	saved := pathPoll
	pathPoll = time.Hour
	t.Cleanup(func() { pathPoll = saved })

	path := filepath.Join(t.TempDir(), "netns-x")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatch(Target{NetnsPath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Wait(ctx) }()

	// Another file of the same directory comes and goes: not ours.
	other := filepath.Join(filepath.Dir(path), "netns-y")
	os.WriteFile(other, nil, 0o600)
	os.Remove(other)
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v when another file of the directory was removed", err)
	case <-time.After(200 * time.Millisecond):
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait after the file was removed = %v, want nil (inotify, not the hourly poll)", err)
	}
}
