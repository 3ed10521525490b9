package pasta

import (
	"math"
	"net/netip"
	"strings"
)

// pasta validates most arguments with glibc's strtoul/strtol/inet_pton,
// whose leniencies (leading blanks and signs, "0x" and octal prefixes,
// trailing garbage where the end pointer is not checked) decide what it
// accepts. These helpers reproduce them so that Parse accepts and rejects
// the same strings.

// cIsSpace is isspace in the C locale.
func cIsSpace(c byte) bool {
	return c == ' ' || (c >= '\t' && c <= '\r')
}

func digitVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	}
	return 99
}

// cScan is the common part of strtoul and strtol: it returns the
// magnitude (saturated at math.MaxUint64, with over set), the sign, and
// how many bytes the C function's end pointer moves past (0: no
// conversion).
func cScan(s string, base int) (mag uint64, neg, over bool, n int) {
	i := 0
	for i < len(s) && cIsSpace(s[i]) {
		i++
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if i < len(s) && s[i] == '0' {
		if (base == 0 || base == 16) && i+1 < len(s) && (s[i+1] == 'x' || s[i+1] == 'X') {
			i += 2
			base = 16
		} else if base == 0 {
			base = 8
		}
	}
	if base == 0 {
		base = 10
	}
	start := i
	for i < len(s) {
		d := digitVal(s[i])
		if d >= base {
			break
		}
		if mag > (math.MaxUint64-uint64(d))/uint64(base) {
			over = true
		} else if !over {
			mag = mag*uint64(base) + uint64(d)
		}
		i++
	}
	if i == start {
		// glibc: "0x" not followed by a hex digit converts the "0"
		// and leaves the end pointer on the 'x'.
		if start >= 2 && (s[start-1] == 'x' || s[start-1] == 'X') && s[start-2] == '0' {
			return 0, false, false, start - 1
		}
		return 0, false, false, 0
	}
	if over {
		mag = math.MaxUint64
	}
	return mag, neg, over, i
}

// strtoul is glibc's strtoul on a 64-bit target: the value (negated
// modulo 2^64 for a leading '-'), the bytes consumed (0: no conversion)
// and whether errno would be ERANGE.
func strtoul(s string, base int) (v uint64, n int, erange bool) {
	mag, neg, over, n := cScan(s, base)
	if over {
		return math.MaxUint64, n, true
	}
	if neg {
		mag = -mag
	}
	return mag, n, false
}

// strtol is glibc's strtol on a 64-bit target, saturating with ERANGE.
func strtol(s string, base int) (v int64, n int, erange bool) {
	mag, neg, over, n := cScan(s, base)
	switch {
	case neg && (over || mag > 1<<63):
		return math.MinInt64, n, true
	case neg:
		return int64(-mag), n, false // -(1<<63) wraps to MinInt64, as wanted
	case over || mag > math.MaxInt64:
		return math.MaxInt64, n, true
	}
	return int64(mag), n, false
}

// inetPton4 is glibc's inet_pton(AF_INET): exactly four decimal fields,
// none above 255, no leading zeros.
func inetPton4(s string) (netip.Addr, bool) {
	var b [4]byte
	octets, sawDigit, cur := 0, false, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			if sawDigit && cur == 0 {
				return netip.Addr{}, false
			}
			cur = cur*10 + int(c-'0')
			if cur > 255 {
				return netip.Addr{}, false
			}
			if !sawDigit {
				octets++
				if octets > 4 {
					return netip.Addr{}, false
				}
				sawDigit = true
			}
			b[octets-1] = byte(cur)
		case c == '.' && sawDigit:
			if octets == 4 {
				return netip.Addr{}, false
			}
			sawDigit, cur = false, 0
		default:
			return netip.Addr{}, false
		}
	}
	if octets < 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(b), true
}

// inetPton6 is inet_pton(AF_INET6). netip's grammar matches glibc's
// except that it takes a "%zone", which inet_pton does not. The result
// stays a 16-byte address even when it is IPv4-mapped, as in pasta's
// struct in6_addr.
func inetPton6(s string) (netip.Addr, bool) {
	if !strings.Contains(s, ":") || strings.Contains(s, "%") {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() {
		return netip.Addr{}, false
	}
	return a, true
}

// The IN4_IS_ADDR_* and IN6_IS_ADDR_* tests pasta applies.

func in4Unspecified(a netip.Addr) bool { return a == netip.IPv4Unspecified() }
func in4Broadcast(a netip.Addr) bool   { return a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) }
func in4Loopback(a netip.Addr) bool    { return a.As4()[0] == 127 }
func in4Multicast(a netip.Addr) bool   { return a.As4()[0]&0xf0 == 0xe0 }

func in6Unspecified(a netip.Addr) bool { return a == netip.IPv6Unspecified() }
func in6Loopback(a netip.Addr) bool    { return a == netip.IPv6Loopback() }
func in6Multicast(a netip.Addr) bool   { return a.As16()[0] == 0xff }
func in6V4Mapped(a netip.Addr) bool    { return a.Is4In6() }

// in6V4Compat is glibc's IN6_IS_ADDR_V4COMPAT: ::a.b.c.d with the last
// word above 1 (so :: and ::1 are not).
func in6V4Compat(a netip.Addr) bool {
	b := a.As16()
	for _, x := range b[:12] {
		if x != 0 {
			return false
		}
	}
	return uint32(b[12])<<24|uint32(b[13])<<16|uint32(b[14])<<8|uint32(b[15]) > 1
}
