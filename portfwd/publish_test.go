package portfwd

import (
	"net/netip"
	"testing"
)

func TestParsePublish(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in   string
		want *Rule // nil: must fail
	}{
		{"8080:80", &Rule{Proto: "tcp", HostPort: 8080, GuestPort: 80}},
		{"8080:80/tcp", &Rule{Proto: "tcp", HostPort: 8080, GuestPort: 80}},
		{"5353:53/udp", &Rule{Proto: "udp", HostPort: 5353, GuestPort: 53}},
		{"127.0.0.1:8080:80", &Rule{Proto: "tcp", HostAddr: a("127.0.0.1"), HostPort: 8080, GuestPort: 80}},
		{"0.0.0.0:1:65535/udp", &Rule{Proto: "udp", HostAddr: a("0.0.0.0"), HostPort: 1, GuestPort: 65535}},
		{"[::1]:8080:80/udp", &Rule{Proto: "udp", HostAddr: a("::1"), HostPort: 8080, GuestPort: 80}},
		{"[::]:8080:80", &Rule{Proto: "tcp", HostAddr: a("::"), HostPort: 8080, GuestPort: 80}},
		{"[fe80::1%eth0]:8080:80", &Rule{Proto: "tcp", HostAddr: a("fe80::1%eth0"), HostPort: 8080, GuestPort: 80}},
		{"", nil},
		{"80", nil},
		{"80/tcp", nil},
		{":80", nil},
		{"8080:", nil},
		{":8080:80", nil},
		{"8080:0", nil},
		{"0:80", nil},
		{"65536:80", nil},
		{"8080:65536", nil},
		{"-1:80", nil},
		{"+80:80", nil},
		{"http:80", nil},
		{"8080:80/sctp", nil},
		{"8080:80/TCP", nil},
		{"8080:80/", nil},
		{"8080:80/tcp/udp", nil},
		{"::1:8080:80", nil},         // IPv6 needs brackets
		{"[::1:8080:80", nil},        // unclosed bracket
		{"[127.0.0.1]:8080:80", nil}, // brackets are for IPv6
		{"[::ffff:127.0.0.1]:8080:80", nil},
		{"localhost:8080:80", nil}, // an IP literal, not a name
		{"1.2.3.4.5:8080:80", nil},
		{"1.2.3.4:5:8080:80", nil},
	}
	for _, tt := range tests {
		got, err := ParsePublish(tt.in)
		switch {
		case tt.want == nil && err == nil:
			t.Errorf("ParsePublish(%q) = %+v, nil; want an error", tt.in, got)
		case tt.want != nil && err != nil:
			t.Errorf("ParsePublish(%q) = %v; want %+v", tt.in, err, *tt.want)
		case tt.want != nil && got != *tt.want:
			t.Errorf("ParsePublish(%q) = %+v; want %+v", tt.in, got, *tt.want)
		}
	}
}
