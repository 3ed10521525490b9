package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/stack"
)

// The TCP limits' flags (docs/limits.md), the same on both command lines:
// --NAME=VALUE on slirp4netns's, --NAME VALUE among pasta's (pastaExtra).
type tcpLimitFlag struct {
	name, metavar, usage string
	count                func(*stack.Limits) *int           // a count, > 0
	duration             func(*stack.Limits) *time.Duration // or a duration, > 0
	def                  string
}

var tcpLimitFlags = []tcpLimitFlag{
	{name: "tcp-max-conns", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxConns),
		usage: "TCP connections of the namespace, established and half-open; more are reset",
		count: func(l *stack.Limits) *int { return &l.TCPMaxConns }},
	{name: "tcp-max-half-open", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxHalfOpen),
		usage: "TCP connections not yet established; a new one resets the oldest",
		count: func(l *stack.Limits) *int { return &l.TCPMaxHalfOpen }},
	{name: "tcp-max-half-open-per-source", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxHalfOpenPerSource),
		usage: "the same, per namespace address",
		count: func(l *stack.Limits) *int { return &l.TCPMaxHalfOpenPerSource }},
	{name: "tcp-max-dials-per-dest", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxDialsPerDest),
		usage: "TCP connects in progress to one destination address and port; more are reset",
		count: func(l *stack.Limits) *int { return &l.TCPMaxDialsPerDest }},
	{name: "tcp-handshake-timeout", metavar: "DURATION", def: stack.DefaultTCPHandshakeTimeout.String(),
		usage:    "time the namespace has to complete a TCP handshake once the host connected",
		duration: func(l *stack.Limits) *time.Duration { return &l.TCPHandshakeTimeout }},
}

// addTCPLimitFlags declares the TCP limits' flags on slirp4netns's command
// line, into l.
func addTCPLimitFlags(fs *pflag.FlagSet, l *stack.Limits) {
	for _, f := range tcpLimitFlags {
		usage := fmt.Sprintf("%s (default %s)", f.usage, f.def)
		if f.count != nil {
			fs.Var(&positiveInt{f.count(l)}, f.name, usage)
		} else {
			fs.Var(&positiveDuration{f.duration(l)}, f.name, usage)
		}
	}
}

func init() {
	for _, f := range tcpLimitFlags {
		metavars[f.name] = f.metavar
	}
}

// tcpLimitExtras are the TCP limits' options on pasta's command line.
func tcpLimitExtras() []pasta.ExtraOption {
	var opts []pasta.ExtraOption
	for _, f := range tcpLimitFlags {
		opts = append(opts, pasta.ExtraOption{Name: f.name, HasArg: true,
			Usage: fmt.Sprintf("  --%s %s\n\t\t\t%s (usernet; default %s)", f.name, f.metavar, f.usage, f.def)})
	}
	return opts
}

// pastaTCPLimits reads the TCP limits' options of a pasta command line.
func pastaTCPLimits(po *pasta.Options, l *stack.Limits) error {
	for _, f := range tcpLimitFlags {
		v, ok := po.ExtraValue(f.name)
		if !ok {
			continue
		}
		var err error
		if f.count != nil {
			err = (&positiveInt{f.count(l)}).Set(v)
		} else {
			err = (&positiveDuration{f.duration(l)}).Set(v)
		}
		if err != nil {
			return fmt.Errorf("--%s %s: %w", f.name, v, err)
		}
	}
	return nil
}

// positiveInt is a pflag.Value for a count that must be at least 1.
type positiveInt struct{ p *int }

func (v *positiveInt) String() string {
	if v.p == nil || *v.p == 0 {
		return ""
	}
	return strconv.Itoa(*v.p)
}
func (v *positiveInt) Type() string { return "int" }
func (v *positiveInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return fmt.Errorf("want a whole number of at least 1")
	}
	*v.p = n
	return nil
}

// positiveDuration is a pflag.Value for a duration that must be positive.
type positiveDuration struct{ p *time.Duration }

func (v *positiveDuration) String() string {
	if v.p == nil || *v.p == 0 {
		return ""
	}
	return v.p.String()
}
func (v *positiveDuration) Type() string { return "duration" }
func (v *positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return fmt.Errorf("want a positive duration such as 10s or 500ms")
	}
	*v.p = d
	return nil
}
