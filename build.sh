#!/bin/sh
# build.sh [DIR]: builds DIR/usernet and DIR/usernet-debug (the usernet_debug build:
# cmd/usernet/debug.go), DIR defaulting to bin. test.sh, demo.sh and bench/run.sh build
# with it; a plain `go build ./cmd/usernet` makes the same program, dynamically linked.
#
# Statically linked: a start skips the dynamic loader (mapping and relocating libc before
# the runtime starts), and an idle instance maps no libc, 0.7 MiB less RSS
# (docs/performance.md, "Startup: a static binary, no regexp"). The static libc is
# libc6-dev's libc.a. netgo and osusergo keep the C resolver and NSS out
# (a static libc would load NSS modules at run time): usernet looks up no host names
# (every address it dials or binds is a literal), and pasta's --runas LOGIN and the
# user nobody are read from /etc/passwd and /etc/group.
set -eu
cd "$(dirname "$0")"
out=${1:-bin}
mkdir -p "$out"
static='-linkmode=external -extldflags=-static'
go build -tags netgo,osusergo -ldflags="$static" -o "$out/usernet" ./cmd/usernet
go build -tags netgo,osusergo,usernet_debug -ldflags="$static" -o "$out/usernet-debug" ./cmd/usernet
