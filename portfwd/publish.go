package portfwd

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParsePublish parses the value of a -p/--publish flag:
//
//	[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]
//
// HOST_ADDR is an IP literal, IPv6 in brackets ("[::1]:8080:80/udp"); the
// default is 0.0.0.0 and the default protocol tcp. The guest address is left
// unset, so the Registry forwards to its default guest. Ports are 1–65535.
// The Rule is not validated against a network; Registry.Add does that.
func ParsePublish(s string) (Rule, error) {
	fail := func(format string, args ...any) (Rule, error) {
		return Rule{}, fmt.Errorf("invalid publish spec %q: %s", s, fmt.Sprintf(format, args...))
	}
	rule := Rule{Proto: "tcp"}
	spec, proto, ok := strings.Cut(s, "/")
	if ok {
		if proto != "tcp" && proto != "udp" {
			return fail("protocol %q is not tcp or udp", proto)
		}
		rule.Proto = proto
	}
	i := strings.LastIndexByte(spec, ':')
	if i < 0 {
		return fail("want [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]")
	}
	rest, guestPort := spec[:i], spec[i+1:]
	hostPort := rest
	if j := strings.LastIndexByte(rest, ':'); j >= 0 {
		host := rest[:j]
		hostPort = rest[j+1:]
		a, err := parseHostAddr(host)
		if err != nil {
			return fail("%v", err)
		}
		rule.HostAddr = a
	}
	var err error
	if rule.HostPort, err = parsePort(hostPort); err != nil {
		return fail("host port: %v", err)
	}
	if rule.GuestPort, err = parsePort(guestPort); err != nil {
		return fail("guest port: %v", err)
	}
	return rule, nil
}

// parseHostAddr parses an IPv4 literal or a bracketed IPv6 literal.
func parseHostAddr(host string) (netip.Addr, error) {
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		a, err := netip.ParseAddr(inner)
		if !ok || err != nil || !a.Is6() || a.Is4In6() {
			return netip.Addr{}, fmt.Errorf("host address %s is not a bracketed IPv6 address", host)
		}
		return a, nil
	}
	a, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("host address %q is not an IP address", host)
	case a.Is6():
		return netip.Addr{}, fmt.Errorf("IPv6 host address %s must be in brackets, e.g. [%s]", host, host)
	}
	return a, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}
