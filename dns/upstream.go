package dns

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// ParseUpstream parses an upstream resolver given as ADDR, ADDR:PORT or
// [IPV6]:PORT; without a port it is 53. IPv6 addresses may carry a zone
// (fe80::1%eth0). Host names, port 0, and unspecified, multicast and
// broadcast addresses are refused. An IPv6 address without brackets is
// always read whole: "::1:53" is the address ::1:53, port 53.
func ParseUpstream(s string) (netip.AddrPort, error) {
	ap, err := parseUpstream(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns upstream %q: %w", s, err)
	}
	return ap, nil
}

func parseUpstream(s string) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if a, err := netip.ParseAddr(s); err == nil {
		ap = netip.AddrPortFrom(a, 53)
	} else if inner, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(inner, "]") {
		a, err := netip.ParseAddr(strings.TrimSuffix(inner, "]"))
		if err != nil || !a.Is6() {
			return ap, errors.New("want an IPv6 address inside brackets")
		}
		ap = netip.AddrPortFrom(a, 53)
	} else if ap, err = netip.ParseAddrPort(s); err != nil {
		return ap, errors.New("want ADDR, ADDR:PORT or [IPV6]:PORT with a numeric address")
	}
	return checkUpstream(ap)
}

// maxResolvConf bounds how much of a resolv.conf file is read.
const maxResolvConf = 1 << 20

// UpstreamFromResolvConf returns the first usable nameserver of the
// resolv.conf file at path, with port 53, as slirp4netns does. Like glibc and
// Go's resolver it reads `nameserver ADDR` lines, skips comment lines
// (starting with # or ;) and anything after the address, and skips
// nameservers it cannot use (not an IP address; unspecified or multicast).
// It fails if no nameserver line is usable.
func UpstreamFromResolvConf(path string) (netip.AddrPort, error) {
	ap, _, err := readResolvConf(path)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns upstream: %w", err)
	}
	return ap, nil
}

// readResolvConf returns the first usable nameserver of the file at path
// (port 53) and the version of the file it read (zero if it could not be
// opened; see resolvFollower).
func readResolvConf(path string) (netip.AddrPort, fileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return netip.AddrPort{}, fileID{}, err
	}
	defer f.Close()
	var id fileID
	if fi, err := f.Stat(); err == nil {
		id, _ = idOf(fi)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxResolvConf))
	if err != nil {
		return netip.AddrPort{}, id, fmt.Errorf("read %s: %w", path, err)
	}
	ap, err := parseResolvConf(string(data))
	if err != nil {
		return netip.AddrPort{}, id, fmt.Errorf("%s: %w", path, err)
	}
	return ap, id, nil
}

// parseResolvConf returns the first usable nameserver in data.
func parseResolvConf(data string) (netip.AddrPort, error) {
	var (
		firstSkip string // why the first nameserver line was skipped
		skipped   int
	)
	skip := func(reason string) {
		if skipped == 0 {
			firstSkip = reason
		}
		skipped++
	}
	for line := range strings.Lines(data) {
		f := strings.Fields(line)
		// Comment lines never start with the bare word "nameserver".
		if len(f) == 0 || f[0] != "nameserver" {
			continue
		}
		if len(f) == 1 {
			skip("nameserver line without an address")
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			skip(fmt.Sprintf("%q: not an IP address", f[1]))
			continue
		}
		ap, err := checkUpstream(netip.AddrPortFrom(a, 53))
		if err != nil {
			skip(fmt.Sprintf("%q: %v", f[1], err))
			continue
		}
		return ap, nil
	}
	switch skipped {
	case 0:
		return netip.AddrPort{}, errors.New("no nameserver line")
	case 1:
		return netip.AddrPort{}, fmt.Errorf("no usable nameserver: %s", firstSkip)
	default:
		return netip.AddrPort{}, fmt.Errorf("no usable nameserver among %d: first %s", skipped, firstSkip)
	}
}
