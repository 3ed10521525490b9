package main

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/stack"
)

func TestLimitFlagsBothCommandLines(t *testing.T) {
	want := stack.Limits{
		UDPFlows:       100,
		UDPPorts:       50,
		UDPBufferBytes: 8 << 20,
		UDPIdle:        90 * time.Second,
		PingFlows:      7,
		AllowSources:   []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("fd12::/64"), netip.MustParsePrefix("192.0.2.7/32")},
	}
	args := []string{"--udp-flows", "100", "--udp-sockets", "50", "--udp-buffers", "8", "--udp-timeout", "90s",
		"--ping-flows", "7", "--allow-source", "10.9.1.0/16", "--allow-source", "fd12::/64", "--allow-source", "192.0.2.7"}

	o, _, err := parseFlags(append(args, "1", "tap0"), &bytes.Buffer{}, 2)
	if err != nil {
		t.Fatalf("slirp4netns command line: %v", err)
	}
	if !reflect.DeepEqual(o.limits, want) {
		t.Errorf("slirp4netns command line: limits %+v, want %+v", o.limits, want)
	}

	po, err := pasta.Parse("pasta", append(args, "--", "true"), pasta.WithExtra(pastaExtra()...))
	if err != nil {
		t.Fatalf("pasta command line: %v", err)
	}
	var l stack.Limits
	if err := limitsFromPasta(po, &l); err != nil {
		t.Fatalf("pasta command line: %v", err)
	}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("pasta command line: limits %+v, want %+v", l, want)
	}
}

// TestPastaSourceCheck: pasta's front end serves any source unless
// --allow-source is given.
func TestPastaSourceCheck(t *testing.T) {
	for _, tc := range []struct {
		args []string
		any  bool
	}{
		{nil, true},
		{[]string{"--allow-source", "10.89.0.0/16"}, false},
	} {
		po, err := pasta.Parse("pasta", append(tc.args, "--config-net", "--", "true"), pasta.WithExtra(pastaExtra()...))
		if err != nil {
			t.Fatal(err)
		}
		o, _, err := pastaOptions(po, hostTemplate)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if o.limits.AnySource != tc.any {
			t.Errorf("%q: AnySource = %v, want %v", tc.args, o.limits.AnySource, tc.any)
		}
	}
}

func TestLimitFlagsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--udp-flows", "0"}, {"--udp-sockets", "x"}, {"--udp-buffers", "-1"},
		{"--udp-timeout", "0s"}, {"--ping-flows", ""}, {"--allow-source", "nope"},
	} {
		if _, _, err := parseFlags(append(args, "1", "tap0"), &bytes.Buffer{}, 2); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("slirp4netns %q: error %v, want one naming %s", args, err, args[0])
		}
		if _, err := pasta.Parse("pasta", append(args, "--", "true"), pasta.WithExtra(pastaExtra()...)); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("pasta %q: error %v, want one naming %s", args, err, args[0])
		}
	}
}
