// Package integration runs the usernet binary (or, for comparison, slirp4netns) end to end:
// as an unprivileged user, against real user+net namespaces, inside a private network
// namespace wired to a fake internet (netns.sh draws the topology).
//
// Run it as root through ../test.sh, or by hand:
//
//	sudo integration/netns.sh go test ./integration -v -count=1
//	sudo USERNET_BIN=/usr/bin/slirp4netns integration/netns.sh go test ./integration -v -count=1
//
// Everything is in the _test.go files; the test binary doubles as the client that runs inside
// the namespaces (helper_test.go).
package integration
