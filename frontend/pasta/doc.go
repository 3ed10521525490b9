// Package pasta is pasta's command line (passt 2025_05_03, pasta mode):
// Parse turns pasta's arguments into Options the way pasta itself reads
// them, and returns the error pasta would print, with its exact text.
//
// pasta parses with glibc's getopt_long, whose behaviour is part of the
// interface callers rely on: options stop at the first non-option (a PID
// or a command), long options may be abbreviated to any unique prefix,
// short options cluster ("-fq") and take attached arguments ("-t80"), and
// a required argument is the next element even if it starts with '-'. A
// flags library cannot do all of that, so this package emulates
// getopt_long, and the C conversions (strtoul, strtol, inet_pton) behind
// pasta's checks, itself.
//
// It owns the command line only: nothing here opens a socket, enters a
// namespace, reads a file or looks a name up. Checks pasta makes against
// the system while parsing (interfaces, users, files, binding ports) are
// the caller's. It must not import gVisor or any other usernet package:
// the command builds on it, not the other way round.
package pasta
