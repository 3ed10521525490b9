package main

import (
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/stack"
)

var tcpLimitArgs = []string{"--tcp-max-conns=100", "--tcp-max-half-open=50", "--tcp-max-half-open-per-source=40",
	"--tcp-max-dials-per-dest=8", "--tcp-handshake-timeout=3s"}

var tcpLimitsWant = stack.Limits{TCPMaxConns: 100, TCPMaxHalfOpen: 50, TCPMaxHalfOpenPerSource: 40,
	TCPMaxDialsPerDest: 8, TCPHandshakeTimeout: 3 * time.Second}

func TestTCPLimitFlags(t *testing.T) {
	o, _, err := parseFlags(append(tcpLimitArgs, "1", "tap0"), io.Discard, 2)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if !reflect.DeepEqual(o.limits, tcpLimitsWant) {
		t.Errorf("limits %+v, want %+v", o.limits, tcpLimitsWant)
	}
	o, _, err = parseFlags([]string{"1", "tap0"}, io.Discard, 2)
	if err != nil || !reflect.DeepEqual(o.limits, stack.Limits{}) {
		t.Errorf("no limit flags: limits %+v (%v), want the zero Limits (the stack's defaults)", o.limits, err)
	}
	for _, bad := range []string{"--tcp-max-conns=0", "--tcp-max-half-open=-1", "--tcp-max-dials-per-dest=x", "--tcp-handshake-timeout=0s", "--tcp-handshake-timeout=10"} {
		if _, _, err := parseFlags([]string{bad, "1", "tap0"}, io.Discard, 2); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestPastaTCPLimitFlags(t *testing.T) {
	var args []string
	for _, a := range tcpLimitArgs {
		args = append(args, strings.Replace(a, "=", " ", 1))
	}
	o, _ := parsePasta(t, strings.Join(args, " ")+" 1")
	want := tcpLimitsWant
	want.AnySource = true // pasta's default (limits.go)
	if !reflect.DeepEqual(o.limits, want) {
		t.Errorf("limits %+v, want %+v", o.limits, want)
	}
	// Checked while parsing, in pasta's order of errors.
	if _, err := pasta.Parse("pasta", []string{"--tcp-max-conns", "0", "1"}, pasta.WithExtra(pastaExtra()...)); err == nil || !strings.Contains(err.Error(), "--tcp-max-conns") {
		t.Errorf("--tcp-max-conns 0: %v, want an error naming it", err)
	}
}
