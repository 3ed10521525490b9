#!/usr/bin/env bash
# test.sh: the whole test suite. Run as root on Debian (CI runs it through .ci/run):
#   1. installs the Debian packages the tests need (nothing when they are there already), and
#      builds (once, cached) a Debian trixie root with Podman 5, pasta 2025 and rootlesskit 2
#      for the pasta tests (integration/trixie.sh),
#   2. downloads the Go modules, checks gofmt and go vet, builds usernet,
#   3. inside a private network namespace wired to a fake internet (integration/netns.sh):
#      unit tests with the race detector, then the integration tests in integration/, which run
#      usernet as an unprivileged user against real user+net namespaces.
# Nothing is sent outside this machine's loopback and the namespaces made for the run (but
# for stages 1 and 2: the Debian mirror and the Go module proxy).
#
# Environment:
#   USERNET_COMPARE=1     also run the integration tests against /usr/bin/slirp4netns (installed)
#   TEST_RUN=REGEXP       only the integration tests matching REGEXP (go test -run)
#   GOTESTFLAGS="..."     extra flags for both go test runs, e.g. -short
#   USERNET_TRIXIE_ROOT   where integration/trixie.sh keeps the trixie root
#                         (default /var/cache/usernet/trixie-root)
set -euo pipefail
cd "$(dirname "$0")"

if [ "${1:-}" = --inside-netns ]; then
	# Stage 3, run by integration/netns.sh inside the private host netns: no module downloads
	# from here (there is no way out anyway). Every stage runs; any failure fails the whole.
	export GOPROXY=off
	rc=0
	echo "== unit tests (go test -race)"
	# shellcheck disable=SC2046,SC2086
	go test -race -count=1 -timeout 10m ${GOTESTFLAGS:-} $(go list ./... | grep -v '/integration$') || rc=1
	bins=("$PWD/bin/usernet")
	[ "${USERNET_COMPARE:-}" != 1 ] || bins+=(/usr/bin/slirp4netns)
	for bin in "${bins[@]}"; do
		echo "== integration tests against $bin"
		# shellcheck disable=SC2086
		USERNET_REQUIRE_NS=1 USERNET_BIN=$bin USERNET_DEBUG_BIN=$PWD/bin/usernet-debug go test -count=1 -v -timeout 15m ${GOTESTFLAGS:-} \
			${TEST_RUN:+-run "$TEST_RUN"} ./integration || rc=1
	done
	exit "$rc"
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "test.sh: run as root (it installs packages, creates network namespaces and the user usernet-test)" >&2
	exit 1
fi

echo "== packages"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null && command -v nsenter >/dev/null || need+=(util-linux)
command -v useradd >/dev/null || need+=(passwd)
command -v gcc >/dev/null || need+=(gcc) # cgo: nsjoin's constructor, and go test -race
[ -e /usr/include/stdio.h ] || need+=(libc6-dev) # and libc.a: build.sh links statically
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates) # go mod download
command -v slirp4netns >/dev/null || need+=(slirp4netns) # the reference; also run by the client tests
# The real clients (integration/clients_test.go): rootlesskit, and rootless podman with runc,
# a local busybox image (busybox-static: it must run alone in the image) and subordinate IDs.
command -v rootlesskit >/dev/null && command -v rootlessctl >/dev/null || need+=(rootlesskit)
command -v newuidmap >/dev/null && command -v newgidmap >/dev/null || need+=(uidmap)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v conmon >/dev/null || need+=(conmon)
command -v catatonit >/dev/null || need+=(catatonit) # podman's rootless pause process
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq </dev/null
	apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

echo "== Debian trixie root (integration/trixie.sh)"
# The pasta tests' clients (Podman 5.4, pasta 2025-05, rootlesskit 2.0) are trixie packages;
# the integration tests run them inside this root (integration/pasta_test.go).
# A failed build leaves a previous root in place; without any, the pasta tests fail and
# the rest of the suite still runs.
export USERNET_TRIXIE_ROOT=${USERNET_TRIXIE_ROOT:-/var/cache/usernet/trixie-root}
if ! integration/trixie.sh "$USERNET_TRIXIE_ROOT"; then
	echo "test.sh: integration/trixie.sh failed (see above)" >&2
fi

export PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
	echo "test.sh: no go in PATH; install Go $(sed -n 's/^go //p' go.mod) or later from https://go.dev/dl/" >&2
	exit 1
fi
go version

echo "== go mod download"
go mod download

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	printf 'gofmt -l: these files need gofmt -w:\n%s\n' "$unformatted" >&2
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== build.sh (bin/usernet and the usernet_debug build)"
# The debug build has the debugging aids (cmd/usernet/debug.go), for the tests of the
# plain-frame path.
go vet -tags usernet_debug ./cmd/usernet
./build.sh bin

echo "== private network namespaces (integration/netns.sh)"
if ! integration/netns.sh "$PWD/test.sh" --inside-netns; then
	echo "== FAIL" >&2
	exit 1
fi
echo "== all tests passed"
