package pasta

import (
	"math"
	"net/netip"
	"reflect"
	"testing"
)

func TestGetoptLong(t *testing.T) {
	long := []longOpt{
		{"alpha", false, 'a'},
		{"beta", true, 'b'},
		{"bet", false, 300},
		{"gamma-one", true, 301},
		{"gamma-two", true, 302},
		{"same", true, 's'},
		{"same-too", true, 's'},
	}
	const opts = "+ab:s:x"
	tests := []struct {
		name string
		args []string
		want []optEvent
		rest []string
		err  string
	}{
		{"empty", nil, nil, []string{}, ""},
		{"stops at non-option", []string{"-a", "cmd", "-x"}, []optEvent{{id: 'a'}}, []string{"cmd", "-x"}, ""},
		{"dash alone is a non-option", []string{"-a", "-", "-x"}, []optEvent{{id: 'a'}}, []string{"-", "-x"}, ""},
		{"double dash ends options", []string{"-a", "--", "-x"}, []optEvent{{id: 'a'}}, []string{"-x"}, ""},
		{"double dash only once", []string{"--", "--", "-x"}, nil, []string{"--", "-x"}, ""},
		{"cluster", []string{"-ax"}, []optEvent{{id: 'a'}, {id: 'x'}}, []string{}, ""},
		{"attached argument", []string{"-b80"}, []optEvent{{id: 'b', arg: "80", hasArg: true}}, []string{}, ""},
		{"cluster then argument", []string{"-axb80", "z"}, []optEvent{{id: 'a'}, {id: 'x'}, {id: 'b', arg: "80", hasArg: true}}, []string{"z"}, ""},
		{"argument is next element", []string{"-ab", "80"}, []optEvent{{id: 'a'}, {id: 'b', arg: "80", hasArg: true}}, []string{}, ""},
		{"argument may start with a dash", []string{"-b", "-a"}, []optEvent{{id: 'b', arg: "-a", hasArg: true}}, []string{}, ""},
		{"argument may be --", []string{"-b", "--", "x"}, []optEvent{{id: 'b', arg: "--", hasArg: true}}, []string{"x"}, ""},
		{"long with =", []string{"--beta=1"}, []optEvent{{id: 'b', arg: "1", hasArg: true}}, []string{}, ""},
		{"long with empty =", []string{"--beta="}, []optEvent{{id: 'b', arg: "", hasArg: true}}, []string{}, ""},
		{"long with next", []string{"--beta", "--alpha"}, []optEvent{{id: 'b', arg: "--alpha", hasArg: true}}, []string{}, ""},
		{"exact match wins over longer", []string{"--bet"}, []optEvent{{id: 300}}, []string{}, ""},
		{"unique prefix", []string{"--al"}, []optEvent{{id: 'a'}}, []string{}, ""},
		{"prefix, same option twice", []string{"--sa", "v"}, []optEvent{{id: 's', arg: "v", hasArg: true}}, []string{}, ""},
		{"prefix with =", []string{"--gamma-t=v"}, []optEvent{{id: 302, arg: "v", hasArg: true}}, []string{}, ""},

		{"ambiguous", []string{"-a", "--gam"}, []optEvent{{id: 'a'}}, nil,
			"prog: option '--gam' is ambiguous; possibilities: '--gamma-one' '--gamma-two'"},
		{"ambiguous keeps =value", []string{"--gamma=1"}, nil, nil,
			"prog: option '--gamma=1' is ambiguous; possibilities: '--gamma-one' '--gamma-two'"},
		{"ambiguous: be matches bet and beta", []string{"--be"}, nil, nil,
			"prog: option '--be' is ambiguous; possibilities: '--beta' '--bet'"},
		{"ambiguous: empty name with =", []string{"--=x"}, nil, nil,
			"prog: option '--=x' is ambiguous; possibilities: '--alpha' '--beta' '--bet' '--gamma-one' '--gamma-two' '--same' '--same-too'"},
		{"unrecognized", []string{"--foo"}, nil, nil, "prog: unrecognized option '--foo'"},
		{"unrecognized keeps =value", []string{"--foo=bar"}, nil, nil, "prog: unrecognized option '--foo=bar'"},
		{"no argument allowed names the full option", []string{"--al=1"}, nil, nil, "prog: option '--alpha' doesn't allow an argument"},
		{"long requires an argument", []string{"--beta"}, nil, nil, "prog: option '--beta' requires an argument"},
		{"long requires an argument at the end", []string{"--gamma-o"}, nil, nil, "prog: option '--gamma-one' requires an argument"},
		{"short requires an argument", []string{"-a", "-b"}, []optEvent{{id: 'a'}}, nil, "prog: option requires an argument -- 'b'"},
		{"short requires an argument in a cluster", []string{"-ab"}, []optEvent{{id: 'a'}}, nil, "prog: option requires an argument -- 'b'"},
		{"invalid short", []string{"-y"}, nil, nil, "prog: invalid option -- 'y'"},
		{"invalid short after valid in a cluster", []string{"-axy"}, []optEvent{{id: 'a'}, {id: 'x'}}, nil, "prog: invalid option -- 'y'"},
		{"colon is no option", []string{"-:"}, nil, nil, "prog: invalid option -- ':'"},
		{"plus is no option", []string{"-+"}, nil, nil, "prog: invalid option -- '+'"},
		{"errors stop parsing", []string{"--foo", "--bar"}, nil, nil, "prog: unrecognized option '--foo'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rest, err := getoptLong("prog", tt.args, opts, long)
			if tt.err != "" {
				if err == nil || err.Msg != tt.err {
					t.Fatalf("error = %v, want %q", err, tt.err)
				}
			} else if err != nil {
				t.Fatalf("unexpected error %q", err.Msg)
			} else if (len(rest) != 0 || len(tt.rest) != 0) && !reflect.DeepEqual(rest, tt.rest) {
				t.Errorf("rest = %q, want %q", rest, tt.rest)
			}
			if len(got) != 0 || len(tt.want) != 0 {
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("options = %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func TestSelectsVhostUser(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{[]string{"--vhost-user"}, true},
		{[]string{"--vh"}, true},
		{[]string{"--v"}, true},
		{[]string{"cmd", "--vhost-user"}, true}, // that pass does not stop at a command
		{[]string{"-t", "--vhost-user"}, true},  // nor know that -t takes an argument
		{[]string{"--", "--vhost-user"}, false},
		{[]string{"--vhost-user=1"}, false},
		{[]string{"--vhost-userx"}, false},
		{[]string{"--version"}, false},
		{[]string{"-vhost-user"}, false},
	} {
		if got := selectsVhostUser(tt.args); got != tt.want {
			t.Errorf("selectsVhostUser(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestStrtoul(t *testing.T) {
	for _, tt := range []struct {
		s      string
		base   int
		v      uint64
		n      int
		erange bool
	}{
		{"80", 10, 80, 2, false},
		{"80abc", 10, 80, 2, false},
		{"  \t80", 10, 80, 5, false},
		{"+80", 10, 80, 3, false},
		{"-1", 10, math.MaxUint64, 2, false},
		{"", 10, 0, 0, false},
		{"abc", 10, 0, 0, false},
		{"-", 10, 0, 0, false},
		{"0x5dc", 0, 1500, 5, false},
		{"0X5DC", 0, 1500, 5, false},
		{"030", 0, 24, 3, false},
		{"08", 0, 0, 1, false},
		{"0x", 0, 0, 1, false},
		{" 0xg", 16, 0, 2, false},
		{"ff", 16, 255, 2, false},
		{"18446744073709551615", 10, math.MaxUint64, 20, false},
		{"18446744073709551616", 10, math.MaxUint64, 20, true},
		{"99999999999999999999999", 10, math.MaxUint64, 23, true},
	} {
		v, n, erange := strtoul(tt.s, tt.base)
		if v != tt.v || n != tt.n || erange != tt.erange {
			t.Errorf("strtoul(%q, %d) = %d, %d, %v; want %d, %d, %v", tt.s, tt.base, v, n, erange, tt.v, tt.n, tt.erange)
		}
	}
}

func TestStrtol(t *testing.T) {
	for _, tt := range []struct {
		s      string
		v      int64
		n      int
		erange bool
	}{
		{"1234", 1234, 4, false},
		{"-5", -5, 2, false},
		{"9223372036854775807", math.MaxInt64, 19, false},
		{"9223372036854775808", math.MaxInt64, 19, true},
		{"-9223372036854775808", math.MinInt64, 20, false},
		{"-9223372036854775809", math.MinInt64, 20, true},
		{"", 0, 0, false},
	} {
		v, n, erange := strtol(tt.s, 10)
		if v != tt.v || n != tt.n || erange != tt.erange {
			t.Errorf("strtol(%q) = %d, %d, %v; want %d, %d, %v", tt.s, v, n, erange, tt.v, tt.n, tt.erange)
		}
	}
}

func TestInetPton(t *testing.T) {
	for _, tt := range []struct {
		s      string
		v4, v6 string // "" = refused
	}{
		{"10.0.2.3", "10.0.2.3", ""},
		{"0.0.0.0", "0.0.0.0", ""},
		{"255.255.255.255", "255.255.255.255", ""},
		{"256.0.0.1", "", ""},
		{"01.2.3.4", "", ""},
		{"1.2.3", "", ""},
		{"1.2.3.4.5", "", ""},
		{"1.2.3.", "", ""},
		{" 1.2.3.4", "", ""},
		{"::1", "", "::1"},
		{"fd00::2", "", "fd00::2"},
		{"::ffff:1.2.3.4", "", "::ffff:1.2.3.4"},
		{"fe80::1%eth0", "", ""},
		{"[::1]", "", ""},
		{"", "", ""},
	} {
		a4, ok4 := inetPton4(tt.s)
		a6, ok6 := inetPton6(tt.s)
		if got := addrOr(a4, ok4); got != tt.v4 {
			t.Errorf("inetPton4(%q) = %q, want %q", tt.s, got, tt.v4)
		}
		if got := addrOr(a6, ok6); got != tt.v6 {
			t.Errorf("inetPton6(%q) = %q, want %q", tt.s, got, tt.v6)
		}
		if ok6 && !a6.Is6() {
			t.Errorf("inetPton6(%q) is not a 16-byte address", tt.s)
		}
	}
}

func addrOr(a netip.Addr, ok bool) string {
	if !ok {
		return ""
	}
	return a.String()
}

func TestV4Compat(t *testing.T) {
	for s, want := range map[string]bool{"::": false, "::1": false, "::2": true, "::1.2.3.4": true, "::ffff:1.2.3.4": false, "fd00::2": false} {
		if got := in6V4Compat(netip.MustParseAddr(s)); got != want {
			t.Errorf("in6V4Compat(%s) = %v, want %v", s, got, want)
		}
	}
}
