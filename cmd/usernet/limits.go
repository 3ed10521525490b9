package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/usernet/usernet/frontend/pasta"
	"github.com/usernet/usernet/stack"
)

// The limits of what a guest can make usernet hold (stack.Limits), as
// usernet's own options on both command lines (docs/limits.md):
// --NAME=VALUE on slirp4netns's, --NAME VALUE among pasta's extras.

// limitFlag is one option that sets a field of stack.Limits.
type limitFlag struct {
	name, metavar, usage string
	def                  string // the default, for the help texts; "" none
	repeatable           bool
	set                  func(l *stack.Limits, arg string) error
}

var limitFlags = func() []limitFlag {
	def := stack.DefaultLimits()
	count := func(field func(*stack.Limits) *int) func(*stack.Limits, string) error {
		return func(l *stack.Limits, arg string) error {
			n, err := strconv.Atoi(arg)
			if err != nil || n < 1 {
				return fmt.Errorf("want a positive integer, not %q", arg)
			}
			*field(l) = n
			return nil
		}
	}
	duration := func(field func(*stack.Limits) *time.Duration) func(*stack.Limits, string) error {
		return func(l *stack.Limits, arg string) error {
			d, err := time.ParseDuration(arg)
			if err != nil || d <= 0 {
				return fmt.Errorf("want a positive duration such as 10s or 500ms, not %q", arg)
			}
			*field(l) = d
			return nil
		}
	}
	return []limitFlag{
		{name: "tcp-max-conns", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxConns),
			usage: "TCP connections of the namespace, established and half-open; more are reset",
			set:   count(func(l *stack.Limits) *int { return &l.TCPMaxConns })},
		{name: "tcp-max-half-open", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxHalfOpen),
			usage: "TCP connections not yet established; a new one resets the oldest",
			set:   count(func(l *stack.Limits) *int { return &l.TCPMaxHalfOpen })},
		{name: "tcp-max-half-open-per-source", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxHalfOpenPerSource),
			usage: "the same, per namespace address",
			set:   count(func(l *stack.Limits) *int { return &l.TCPMaxHalfOpenPerSource })},
		{name: "tcp-max-dials-per-dest", metavar: "N", def: strconv.Itoa(stack.DefaultTCPMaxDialsPerDest),
			usage: "TCP connects in progress to one destination address and port; more are reset",
			set:   count(func(l *stack.Limits) *int { return &l.TCPMaxDialsPerDest })},
		{name: "tcp-handshake-timeout", metavar: "DURATION", def: stack.DefaultTCPHandshakeTimeout.String(),
			usage: "time the namespace has to complete a TCP handshake once the host connected",
			set:   duration(func(l *stack.Limits) *time.Duration { return &l.TCPHandshakeTimeout })},
		{name: "udp-flows", metavar: "N", usage: "most UDP flows (guest port, remote) at once", def: strconv.Itoa(def.UDPFlows),
			set: count(func(l *stack.Limits) *int { return &l.UDPFlows })},
		{name: "udp-sockets", metavar: "N", usage: "most host UDP sockets, one per guest UDP port", def: strconv.Itoa(def.UDPPorts),
			set: count(func(l *stack.Limits) *int { return &l.UDPPorts })},
		{name: "udp-buffers", metavar: "MiB", usage: "budget of large UDP receive buffers, in MiB", def: strconv.Itoa(def.UDPBufferBytes >> 20),
			set: func(l *stack.Limits, arg string) error {
				n, err := strconv.Atoi(arg)
				if err != nil || n < 1 || n > 1<<20 {
					return fmt.Errorf("want a number of MiB, not %q", arg)
				}
				l.UDPBufferBytes = n << 20
				return nil
			}},
		{name: "udp-timeout", metavar: "DURATION", usage: "how long a quiet UDP flow lives, e.g. 240s or 4m", def: fmt.Sprint(def.UDPIdle.Seconds(), "s"),
			set: func(l *stack.Limits, arg string) error {
				d, err := parseSeconds(arg)
				if err != nil {
					return err
				}
				l.UDPIdle = d
				return nil
			}},
		{name: "ping-flows", metavar: "N", usage: "most ICMP echo flows (guest address, destination, identifier) at once", def: strconv.Itoa(def.PingFlows),
			set: count(func(l *stack.Limits) *int { return &l.PingFlows })},
		{name: "allow-source", metavar: "PREFIX", repeatable: true, usage: "also accept frames from this source prefix, routed through the namespace; repeatable",
			set: func(l *stack.Limits, arg string) error {
				p, err := netip.ParsePrefix(arg)
				if err != nil {
					a, aerr := netip.ParseAddr(arg)
					if aerr != nil {
						return fmt.Errorf("want an address or prefix, not %q", arg)
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				l.AllowSources = append(l.AllowSources, p.Masked())
				return nil
			}},
	}
}()

// parseSeconds reads a duration: a Go duration ("90s", "4m") or a number
// of seconds.
func parseSeconds(arg string) (time.Duration, error) {
	d, err := time.ParseDuration(arg)
	if err != nil {
		n, nerr := strconv.Atoi(arg)
		if nerr != nil {
			return 0, fmt.Errorf("want a duration such as 240s, not %q", arg)
		}
		d = time.Duration(n) * time.Second
	}
	if d < time.Second || d > 24*time.Hour {
		return 0, fmt.Errorf("want a duration from 1s to 24h, not %q", arg)
	}
	return d, nil
}

// addLimitFlags declares the limit flags on the slirp4netns command line.
func addLimitFlags(fs *pflag.FlagSet) {
	for _, f := range limitFlags {
		usage := f.usage
		if f.def != "" {
			usage += " (default " + f.def + ")"
		}
		if f.repeatable {
			fs.Var(new(stringList), f.name, usage)
		} else {
			fs.String(f.name, "", usage)
		}
		metavars[f.name] = f.metavar
	}
}

// limitsFromFlags reads the limit flags of a parsed slirp4netns command
// line into l.
func limitsFromFlags(fs *pflag.FlagSet, l *stack.Limits) error {
	for _, f := range limitFlags {
		if !fs.Changed(f.name) {
			continue
		}
		var args []string
		if f.repeatable {
			args = *fs.Lookup(f.name).Value.(*stringList)
		} else {
			v, _ := fs.GetString(f.name)
			args = []string{v}
		}
		for _, a := range args {
			if err := f.set(l, a); err != nil {
				return fmt.Errorf("--%s: %w", f.name, err)
			}
		}
	}
	return nil
}

// pastaLimitOptions are the limit flags as extra options of pasta's
// command line.
func pastaLimitOptions() []pasta.ExtraOption {
	var out []pasta.ExtraOption
	for _, f := range limitFlags {
		var scratch stack.Limits
		usage := fmt.Sprintf("  --%s %s\n\t\t\t%s (usernet", f.name, f.metavar, f.usage)
		if f.def != "" {
			usage += "; default " + f.def
		}
		usage += ")"
		out = append(out, pasta.ExtraOption{
			Name:   f.name,
			HasArg: true,
			Check: func(arg string) error {
				if err := f.set(&scratch, arg); err != nil {
					return fmt.Errorf("--%s: %w", f.name, err)
				}
				return nil
			},
			Usage: usage,
		})
	}
	return out
}

// limitsFromPasta reads the limit options of a parsed pasta command line
// into l, in order (--allow-source accumulates, others take the last).
func limitsFromPasta(po *pasta.Options, l *stack.Limits) error {
	for _, e := range po.Extra {
		for _, f := range limitFlags {
			if f.name != e.Name {
				continue
			}
			if err := f.set(l, e.Value); err != nil {
				return fmt.Errorf("--%s: %w", f.name, err)
			}
		}
	}
	return nil
}
