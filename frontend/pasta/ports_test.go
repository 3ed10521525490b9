package pasta

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPortSpecs(t *testing.T) {
	type r = PortRange
	tests := []struct {
		opt  string // "-t" unless set
		spec string
		want []PortRange // Spec is filled in from spec
	}{
		{"", "22", []r{{First: 22, Last: 22, To: 22}}},
		{"", "22:23", []r{{First: 22, Last: 22, To: 23}}},
		{"", "22,25", []r{{First: 22, Last: 22, To: 22}, {First: 25, Last: 25, To: 25}}},
		{"", "22-80", []r{{First: 22, Last: 80, To: 22}}},
		{"", "22-80:32-90", []r{{First: 22, Last: 80, To: 32}}},
		{"", "80,81", []r{{First: 80, Last: 81, To: 80}}},
		{"", "80:90,81:91", []r{{First: 80, Last: 81, To: 90}}},
		{"", "80:90,81:80", []r{{First: 80, Last: 80, To: 90}, {First: 81, Last: 81, To: 80}}},
		{"", "5-25,~10-20", []r{{First: 5, Last: 9, To: 5}, {First: 21, Last: 25, To: 21}}},
		{"", "~10-20,5-25:105-125", []r{{First: 5, Last: 9, To: 105}, {First: 21, Last: 25, To: 121}}},
		{"", "1-3,~2", []r{{First: 1, Last: 1, To: 1}, {First: 3, Last: 3, To: 3}}},
		{"", "65535", []r{{First: 65535, Last: 65535, To: 65535}}},
		{"", "80:0", []r{{First: 80, Last: 80, To: 0}}}, // only the listening side is checked for 0
		{"", "+80", []r{{First: 80, Last: 80, To: 80}}},
		{"", " 80- 81", []r{{First: 80, Last: 81, To: 80}}},
		{"", "192.0.2.1/5", []r{{BindAddr: ip("192.0.2.1"), First: 5, Last: 5, To: 5}}},
		{"", "[192.0.2.1]/5", []r{{BindAddr: ip("192.0.2.1"), First: 5, Last: 5, To: 5}}},
		{"", "::1/80", []r{{BindAddr: ip("::1"), First: 80, Last: 80, To: 80}}},
		{"", "[::1]/80", []r{{BindAddr: ip("::1"), First: 80, Last: 80, To: 80}}},
		{"", "0.0.0.0/80", []r{{BindAddr: ip("0.0.0.0"), First: 80, Last: 80, To: 80}}},
		{"", "::ffff:127.0.0.1/80", []r{{BindAddr: ip("127.0.0.1"), First: 80, Last: 80, To: 80}}},
		{"", "fe80::1%eth0/80", []r{{BindAddr: ip("fe80::1"), BindIfname: "eth0", First: 80, Last: 80, To: 80}}},
		{"", "[::1]%lo/80", []r{{BindAddr: ip("::1"), BindIfname: "lo", First: 80, Last: 80, To: 80}}},
		{"", "%eth0/80", []r{{BindIfname: "eth0", First: 80, Last: 80, To: 80}}},
		{"", "%abcdefghijklmno/80", []r{{BindIfname: "abcdefghijklmno", First: 80, Last: 80, To: 80}}},
		{"", "%/80", []r{{First: 80, Last: 80, To: 80}}},
		{"-u", "127.0.0.1/5353-5353:53-53", []r{{BindAddr: ip("127.0.0.1"), First: 5353, Last: 5353, To: 53}}},
		{"-T", "5432", []r{{First: 5432, Last: 5432, To: 5432}}},
		{"-U", "53:5353", []r{{First: 53, Last: 53, To: 5353}}},
		// Exclusions only: everything else but the ephemeral ports
		// (Linux's default 32768-60999 here), bind failures tolerated.
		{"", "~25", []r{{First: 1, Last: 24, To: 1, Weak: true}, {First: 26, Last: 32767, To: 26, Weak: true}, {First: 61000, Last: 65535, To: 61000, Weak: true}}},
		{"", "~0", []r{{First: 1, Last: 32767, To: 1, Weak: true}, {First: 61000, Last: 65535, To: 61000, Weak: true}}},
		{"", "~40000", []r{{First: 1, Last: 32767, To: 1, Weak: true}, {First: 61000, Last: 65535, To: 61000, Weak: true}}},
		{"", "127.0.0.1/~1-1000,~1001-65000", []r{{BindAddr: ip("127.0.0.1"), First: 65001, Last: 65535, To: 65001, Weak: true}}},
		{"-T", "~1-65000", []r{{First: 65001, Last: 65535, To: 65001, Weak: true}}},
	}
	for _, tt := range tests {
		opt := tt.opt
		if opt == "" {
			opt = "-t"
		}
		o, err := Parse("pasta", []string{opt, tt.spec})
		if err != nil {
			t.Errorf("%s %q: %v", opt, tt.spec, err)
			continue
		}
		f := map[string]*Forward{"-t": &o.TCP, "-u": &o.UDP, "-T": &o.TCPNs, "-U": &o.UDPNs}[opt]
		for i := range tt.want {
			tt.want[i].Spec = tt.spec
		}
		if f.Mode != ModeSpec || !reflect.DeepEqual(f.Ranges, tt.want) {
			t.Errorf("%s %q:\ngot  %v %+v\nwant %+v", opt, tt.spec, f.Mode, f.Ranges, tt.want)
		}
		if len(o.Warnings) != 0 {
			t.Errorf("%s %q: warnings %q", opt, tt.spec, o.Warnings)
		}
	}
}

func TestPortSpecErrors(t *testing.T) {
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"-t", "99999"}, "Invalid port specifier 99999"},
		{[]string{"-t", "65536"}, "Invalid port specifier 65536"},
		{[]string{"-t", "5-3"}, "Invalid port specifier 5-3"},
		{[]string{"-t", "abc"}, "Invalid port specifier abc"},
		{[]string{"-t", "80:"}, "Invalid port specifier 80:"},
		{[]string{"-t", ""}, "Invalid port specifier "},
		{[]string{"-t", "80-"}, "Invalid port specifier 80-"},
		{[]string{"-t", "-80"}, "Invalid port specifier -80"},
		{[]string{"-t", "80--90"}, "Invalid port specifier 80--90"},
		{[]string{"-t", "80 "}, "Invalid port specifier 80 "},
		{[]string{"-t", "80,"}, "Invalid port specifier 80,"},
		{[]string{"-t", ",80"}, "Invalid port specifier ,80"},
		{[]string{"-t", "80:90-91"}, "Invalid port specifier 80:90-91"},
		{[]string{"-t", "80-81:90"}, "Invalid port specifier 80-81:90"},
		{[]string{"-t", "80:90:100"}, "Invalid port specifier 80:90:100"},
		{[]string{"-t", "80x"}, "Invalid port specifier 80x"},
		{[]string{"-t", "~"}, "Invalid port specifier ~"},
		{[]string{"-t", "~80:90"}, "Invalid port specifier ~80:90"},
		{[]string{"-t", "~~80"}, "Invalid port specifier ~~80"},
		{[]string{"-t", "/80"}, "Invalid port specifier /80"},
		{[]string{"-t", "[]/80"}, "Invalid port specifier []/80"},
		{[]string{"-t", "host/80"}, "Invalid port specifier host/80"},
		{[]string{"-t", "10.0.0.1/24/80"}, "Invalid port specifier 10.0.0.1/24/80"},
		{[]string{"-t", "[fe80::1%eth0]/80"}, "Invalid port specifier [fe80::1%eth0]/80"},
		{[]string{"-t", "%abcdefghijklmnop/80"}, "Invalid port specifier %abcdefghijklmnop/80"},
		{[]string{"-T", "127.0.0.1/80"}, "Invalid port specifier 127.0.0.1/80"},
		{[]string{"-U", "%lo/53"}, "Invalid port specifier %lo/53"},
		{[]string{"-t", "all"}, "'all' port forwarding is only allowed for passt"},
		{[]string{"-T", "all"}, "'all' port forwarding is only allowed for passt"},
		{[]string{"-t", "none", "-t", "none"}, "Port forwarding mode 'none' conflicts with previous mode"},
		{[]string{"-t", "80", "-t", "none"}, "Port forwarding mode 'none' conflicts with previous mode"},
		{[]string{"-t", "auto", "-t", "auto"}, "Port forwarding mode 'auto' conflicts with previous mode"},
		{[]string{"-u", "53", "-u", "auto"}, "Port forwarding mode 'auto' conflicts with previous mode"},
		{[]string{"-t", "none", "-t", "all"}, "Port forwarding mode 'all' conflicts with previous mode"},
		{[]string{"-t", "none", "-t", "80"}, "Specific ports cannot be specified together with all/none/auto"},
		{[]string{"-U", "auto", "-U", "~53"}, "Specific ports cannot be specified together with all/none/auto"},
		{[]string{"-t", "0"}, "Can't forward port 0 for option '-t 0'"},
		{[]string{"-T", "0-5"}, "Can't forward port 0 for option '-T 0-5'"},
		{[]string{"-u", "127.0.0.1/0:53"}, "Can't forward port 0 for option '-u 127.0.0.1/0:53'"},
		{[]string{"-t", "0,abc"}, "Can't forward port 0 for option '-t 0,abc'"}, // items go in order
		{[]string{"-t", "abc,0"}, "Invalid port specifier abc,0"},
		{[]string{"-t", "~10-20,~15"}, "Overlapping excluded ranges ~10-20,~15"},
		{[]string{"-t", "1-100,~10-20,~20-30"}, "Overlapping excluded ranges 1-100,~10-20,~20-30"},
		{[]string{"-t", "~10-20,~15,abc"}, "Overlapping excluded ranges ~10-20,~15,abc"}, // exclusions first
		{[]string{"-t", "80,~80"}, "Failed to bind any port for '-t 80,~80'"},
		{[]string{"-U", "~1-65535"}, "Failed to bind any port for '-U ~1-65535'"},
		{[]string{"-t", "80,~80,abc"}, "Failed to bind any port for '-t 80,~80,abc'"},
	}
	for _, tt := range tests {
		_, err := Parse("pasta", tt.args)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Msg != tt.msg {
			t.Errorf("%q: error %v, want %q", tt.args, err, tt.msg)
		}
	}
}

func TestPortModes(t *testing.T) {
	o := mustParse(t, "-t", "auto", "-u", "none", "-T", "80", "-T", "90-91", "--tcp-ns=100")
	if o.TCP.Mode != ModeAuto || !o.TCP.Auto() {
		t.Errorf("-t auto: %v", o.TCP.Mode)
	}
	if o.UDP.Mode != ModeNone || o.UDP.Auto() {
		t.Errorf("-u none: %v", o.UDP.Mode)
	}
	if o.UDPNs.Mode != ModeUnset || !o.UDPNs.Auto() {
		t.Errorf("-U unset: %v", o.UDPNs.Mode)
	}
	want := []PortRange{{First: 80, Last: 80, To: 80, Spec: "80"}, {First: 90, Last: 91, To: 90, Spec: "90-91"}, {First: 100, Last: 100, To: 100, Spec: "100"}}
	if o.TCPNs.Mode != ModeSpec || !reflect.DeepEqual(o.TCPNs.Ranges, want) {
		t.Errorf("-T accumulates: %+v", o.TCPNs)
	}
	if o.TCPNs.Len() != 4 {
		t.Errorf("Len = %d, want 4", o.TCPNs.Len())
	}
}

// pasta keeps one target per port number: the last spec covering a port
// decides for every listener of it, and it warns.
func TestPortRemap(t *testing.T) {
	o := mustParse(t, "-t", "127.0.0.1/80:8080", "-t", "::1/80-81:9090-9091", "-t", "82")
	if n := len(o.TCP.Ranges); n != 3 {
		t.Fatalf("ranges %+v", o.TCP.Ranges)
	}
	for port, want := range map[uint16]uint16{80: 9090, 81: 9091, 82: 82} {
		if got, ok := o.TCP.Target(port); got != want || !ok {
			t.Errorf("Target(%d) = %d, %v; want %d", port, got, ok, want)
		}
	}
	if _, ok := o.TCP.Target(83); ok {
		t.Errorf("Target(83) forwarded")
	}
	var got []Mapping
	for m := range o.TCP.Mappings() {
		got = append(got, m)
	}
	want := []Mapping{
		{BindAddr: ip("127.0.0.1"), Port: 80, To: 9090},
		{BindAddr: ip("::1"), Port: 80, To: 9090},
		{BindAddr: ip("::1"), Port: 81, To: 9091},
		{Port: 82, To: 82},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Mappings:\ngot  %+v\nwant %+v", got, want)
	}
	if w := []string{"Altering mapping of already mapped port number: ::1/80-81:9090-9091"}; !reflect.DeepEqual(o.Warnings, w) {
		t.Errorf("warnings %q, want %q", o.Warnings, w)
	}

	// Each option has its own map: -t 80 -u 80 is no remapping.
	if o := mustParse(t, "-t", "80", "-u", "80", "-T", "80"); len(o.Warnings) != 0 {
		t.Errorf("warnings %q", o.Warnings)
	}
	if o := mustParse(t, "-t", "~25", "-t", "25"); len(o.Warnings) != 0 {
		t.Errorf("warnings %q", o.Warnings)
	}
	if o := mustParse(t, "-t", "~25", "-t", "26"); len(o.Warnings) != 1 {
		t.Errorf("warnings %q", o.Warnings)
	}
}

func TestEphemeral(t *testing.T) {
	o, err := Parse("pasta", []string{"-t", "~25", "-u", "~53"}, WithEphemeral([2]uint16{49152, 65535}))
	if err != nil {
		t.Fatal(err)
	}
	want := []PortRange{{First: 1, Last: 24, To: 1, Weak: true, Spec: "~25"}, {First: 26, Last: 49151, To: 26, Weak: true, Spec: "~25"}}
	if !reflect.DeepEqual(o.TCP.Ranges, want) {
		t.Errorf("got %+v, want %+v", o.TCP.Ranges, want)
	}
	if n := o.TCP.Len(); n != 49150 {
		t.Errorf("Len = %d", n)
	}
	count := 0
	for m := range o.UDP.Mappings() {
		if m.Port == 53 || m.Port >= 49152 || m.Port == 0 || m.To != m.Port || !m.Weak {
			t.Fatalf("mapping %+v", m)
		}
		count++
	}
	if count != 49150 {
		t.Errorf("%d mappings", count)
	}
	// An empty range (first > last) excludes nothing.
	o, err = Parse("pasta", []string{"-t", "~25"}, WithEphemeral([2]uint16{2, 1}))
	if err != nil || o.TCP.Len() != 65534 {
		t.Errorf("%v, %d ports", err, o.TCP.Len())
	}
	// Explicit ranges are not cut by the ephemeral range.
	if o := mustParse(t, "-t", "32000-33000"); o.TCP.Len() != 1001 {
		t.Errorf("Len = %d", o.TCP.Len())
	}
}

func TestParseEphemeral(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want [2]uint16
		ok   bool
	}{
		{"32768\t60999\n", [2]uint16{32768, 60999}, true},
		{"1024\t65535", [2]uint16{1024, 65535}, true},
		{"60999\t32768\n", [2]uint16{60999, 32768}, true},
		{"32768 60999\n", FallbackEphemeral, false},
		{"32768\t60999 \n", FallbackEphemeral, false},
		{"32768\t65536\n", FallbackEphemeral, false},
		{"-1\t10\n", FallbackEphemeral, false},
		{"", FallbackEphemeral, false},
		{"\n32768\t60999\n", FallbackEphemeral, false},
	} {
		got, ok := ParseEphemeral([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseEphemeral(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestPortSpecTruncated(t *testing.T) {
	// pasta copies a spec into BUFSIZ bytes: what does not fit is not
	// parsed, but messages quote the whole argument.
	spec := "80:" + strings.Repeat("0", bufSiz-1-len("80:")-len("90")) + "90" + "x"
	o, err := Parse("pasta", []string{"-t", spec})
	if err != nil {
		t.Fatalf("%v", err)
	}
	want := []PortRange{{First: 80, Last: 80, To: 90, Spec: spec}}
	if !reflect.DeepEqual(o.TCP.Ranges, want) {
		t.Errorf("got %+v", o.TCP.Ranges)
	}
	if _, err := Parse("pasta", []string{"-t", spec[1:]}); err == nil {
		t.Errorf("a spec that fits is parsed whole")
	}
}
