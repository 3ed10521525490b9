//go:build !amd64

package sandbox

// No allow-list for this architecture yet: Filter returns ErrArch, so
// --enable-seccomp fails at start with a clear message. --enable-sandbox
// works everywhere.
const auditArch = 0

var rules []rule
