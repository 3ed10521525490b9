package pasta

import (
	"fmt"
	"strings"
)

// longOpt is one entry of a getopt_long table.
type longOpt struct {
	name   string
	hasArg bool
	// id is what getopt_long returns. glibc does not call a prefix
	// ambiguous when the candidates have the same has_arg, flag and val
	// (--sock: --socket and --socket-path), so two names with one id
	// are one option.
	id int
}

// optEvent is one option getopt_long returned.
type optEvent struct {
	id     int
	arg    string
	hasArg bool
}

// getoptLong runs glibc's getopt_long over args (argv without argv[0])
// with a "+"-prefixed optstring (REQUIRE_ORDER) and opterr on, as pasta
// does. It returns the options in order up to the first error, the error
// (the line glibc prints, without the newline) if parsing stopped at one,
// and the non-option arguments: everything from the first non-option, or
// after "--". Short options have their character as id.
func getoptLong(argv0 string, args []string, optstring string, long []longOpt) (opts []optEvent, rest []string, uerr *UsageError) {
	optstring = strings.TrimPrefix(optstring, "+")
	short := map[byte]bool{} // option character → takes an argument
	for i := 0; i < len(optstring); i++ {
		c := optstring[i]
		if c == ':' {
			continue
		}
		short[c] = i+1 < len(optstring) && optstring[i+1] == ':'
	}
	fail := func(format string, a ...any) ([]optEvent, []string, *UsageError) {
		return opts, nil, &UsageError{Msg: argv0 + ": " + fmt.Sprintf(format, a...)}
	}

	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' { // "-" alone is a non-option too
			break
		}
		i++

		if a[1] == '-' {
			next := a[2:] // glibc's __nextchar, "=value" included
			name, val, hasVal := strings.Cut(next, "=")
			o, ambiguous := matchLong(long, name)
			switch {
			case ambiguous != nil:
				var b strings.Builder
				for _, c := range ambiguous {
					fmt.Fprintf(&b, " '--%s'", c)
				}
				return fail("option '--%s' is ambiguous; possibilities:%s", next, b.String())
			case o == nil:
				return fail("unrecognized option '--%s'", next)
			case hasVal && !o.hasArg:
				return fail("option '--%s' doesn't allow an argument", o.name)
			case hasVal:
				opts = append(opts, optEvent{id: o.id, arg: val, hasArg: true})
			case o.hasArg && i < len(args):
				opts = append(opts, optEvent{id: o.id, arg: args[i], hasArg: true})
				i++
			case o.hasArg:
				return fail("option '--%s' requires an argument", o.name)
			default:
				opts = append(opts, optEvent{id: o.id})
			}
			continue
		}

		// A cluster of short options; the first that takes an argument
		// takes the rest of the cluster, or else the next element
		// whatever it looks like.
		for j := 1; j < len(a); j++ {
			c := a[j]
			takesArg, ok := short[c]
			if !ok {
				return fail("invalid option -- '%s'", string([]byte{c}))
			}
			if !takesArg {
				opts = append(opts, optEvent{id: int(c)})
				continue
			}
			switch {
			case j+1 < len(a):
				opts = append(opts, optEvent{id: int(c), arg: a[j+1:], hasArg: true})
			case i < len(args):
				opts = append(opts, optEvent{id: int(c), arg: args[i], hasArg: true})
				i++
			default:
				return fail("option requires an argument -- '%s'", string([]byte{c}))
			}
			break
		}
	}
	return opts, args[i:], nil
}

// matchLong finds name in the table as glibc does: an exact match wins,
// else a unique prefix. For an ambiguous prefix it returns the names
// glibc lists: the first candidate and every later one that is a
// different option from it, in table order.
func matchLong(long []longOpt, name string) (*longOpt, []string) {
	for i := range long {
		if long[i].name == name {
			return &long[i], nil
		}
	}
	var found *longOpt
	var ambiguous []string
	for i := range long {
		o := &long[i]
		if !strings.HasPrefix(o.name, name) {
			continue
		}
		if found == nil {
			found = o
			continue
		}
		if o.hasArg != found.hasArg || o.id != found.id {
			if ambiguous == nil {
				ambiguous = []string{found.name}
			}
			ambiguous = append(ambiguous, o.name)
		}
	}
	if ambiguous != nil {
		return nil, ambiguous
	}
	return found, nil
}

// selectsVhostUser reports whether pasta's first, silent getopt_long pass
// (optstring "-:", a table of just --vhost-user) would see --vhost-user.
// That pass returns non-options in order instead of stopping at them and
// knows no short option, so it looks at every element before "--",
// including a command's arguments and option arguments, and accepts any
// prefix of "vhost-user" (--v, --vh, ...) but not "=value".
func selectsVhostUser(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if name, ok := strings.CutPrefix(a, "--"); ok && name != "" &&
			!strings.Contains(name, "=") && strings.HasPrefix("vhost-user", name) {
			return true
		}
	}
	return false
}
