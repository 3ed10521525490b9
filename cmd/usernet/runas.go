package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// runAs is the user and group pasta's --runas names, resolved.
type runAs struct{ UID, GID int }

// pastaRunAs resolves --runas as pasta does (UID, UID:GID, LOGIN or
// LOGIN:GROUP; a UID alone is also the GID, a LOGIN gives its group), or
// without it picks nobody for root in the initial user namespace, warning
// as pasta does. nil: stay who we are.
func pastaRunAs(spec string, given bool, warn io.Writer) (*runAs, error) {
	if given {
		r, err := parseRunAs(spec)
		if err != nil {
			return nil, fmt.Errorf("Invalid --runas option: %s", spec)
		}
		return r, nil
	}
	if os.Geteuid() != 0 || !initialUserns() {
		return nil, nil
	}
	fmt.Fprintln(warn, "Started as root, will change to nobody.")
	u, err := user.Lookup("nobody")
	if err != nil {
		return &runAs{65534, 65534}, nil
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &runAs{uid, gid}, nil
}

func parseRunAs(spec string) (*runAs, error) {
	login, group, hasGroup := strings.Cut(spec, ":")
	var r runAs
	if n, err := strconv.ParseInt(login, 0, 64); err == nil && n >= 0 && n <= 1<<32-1 {
		r.UID, r.GID = int(n), int(n)
	} else {
		u, err := user.Lookup(login)
		if err != nil {
			return nil, err
		}
		r.UID, _ = strconv.Atoi(u.Uid)
		r.GID, _ = strconv.Atoi(u.Gid)
		if r.UID == 0 {
			// pasta will not be told to stay root by name.
			return nil, errors.New("root by name")
		}
	}
	if !hasGroup {
		return &r, nil
	}
	if n, err := strconv.ParseInt(group, 0, 64); err == nil && n >= 0 && n <= 1<<32-1 {
		r.GID = int(n)
		return &r, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return nil, err
	}
	r.GID, _ = strconv.Atoi(g.Gid)
	return &r, nil
}

// initialUserns reports whether this process is in the initial user
// namespace, whose map is the identity of every ID.
func initialUserns() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(b)), " ") == "0 0 4294967295"
}

// drop becomes r's user and group, without supplementary groups, in
// every thread (the syscall package does that, through libc with cgo).
func (r *runAs) drop() error {
	// Without CAP_SETGID it fails, and there is nothing to drop.
	if err := syscall.Setgroups(nil); err != nil && !errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("--runas: drop supplementary groups: %w", err)
	}
	if err := syscall.Setgid(r.GID); err != nil {
		return fmt.Errorf("--runas: set group %d: %w", r.GID, err)
	}
	if err := syscall.Setuid(r.UID); err != nil {
		return fmt.Errorf("--runas: set user %d: %w", r.UID, err)
	}
	return nil
}
