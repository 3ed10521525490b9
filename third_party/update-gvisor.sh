#!/usr/bin/env bash
# update-gvisor.sh: rebuild third_party/gvisor, the patched copy of gVisor that go.mod's
# `replace gvisor.dev/gvisor => ./third_party/gvisor` builds usernet with.
#
#   third_party/update-gvisor.sh [VERSION]
#
# VERSION (a gvisor.dev/gvisor module version, default: the one in third_party/gvisor/UPSTREAM)
# is fetched from the Go module proxy; the packages usernet imports (directly or not, tests
# included) are copied with their LICENSE, AUTHORS and go.mod, and every patch in
# third_party/gvisor-patches/ is applied in name order. Why each patch exists is in its header
# and in docs/design.md ("Carried gVisor patches"). Nothing else of gVisor is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
dst=third_party/gvisor
version=${1:-$(cat "$dst/UPSTREAM" 2>/dev/null || true)}
[ -n "$version" ] || { echo "update-gvisor.sh: no VERSION given and no $dst/UPSTREAM" >&2; exit 1; }

src=$(GOFLAGS=-mod=mod go mod download -json "gvisor.dev/gvisor@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "update-gvisor.sh: could not download gvisor.dev/gvisor@$version" >&2; exit 1; }

# The package list comes from a build against the unpatched module, so that a package newly
# imported by usernet is picked up: a temporary go.mod without the replace.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed '/^replace gvisor.dev\/gvisor /d' go.mod >"$tmp/go.mod"
cp go.sum "$tmp/go.sum"
GOFLAGS="-modfile=$tmp/go.mod -mod=mod" go get "gvisor.dev/gvisor@$version" >/dev/null 2>&1
pkgs=$(GOFLAGS="-modfile=$tmp/go.mod -mod=mod" go list -deps -test ./... | grep '^gvisor.dev/gvisor/' | sort -u)

rm -rf "$dst"
mkdir -p "$dst"
cp "$src/LICENSE" "$src/AUTHORS" "$src/go.mod" "$dst/"
copy() {
	local rel=${1#gvisor.dev/gvisor/} f
	[ ! -d "$dst/$rel" ] || return 0
	mkdir -p "$dst/$rel"
	for f in "$src/$rel"/*; do
		case $f in
		*_test.go) ;;
		*.go | *.s) cp "$f" "$dst/$rel/" ;;
		esac
	done
}
for p in $pkgs; do copy "$p"; done
# go mod tidy reads every file whatever its build tags (other GOOS/GOARCH too): follow the
# imports of the copied files until nothing new turns up.
while :; do
	more=$(grep -rhoE '"gvisor\.dev/gvisor/[^"]+"' "$dst" --include='*.go' | tr -d '"' | sort -u |
		while read -r p; do [ -d "$dst/${p#gvisor.dev/gvisor/}" ] || echo "$p"; done)
	[ -n "$more" ] || break
	for p in $more; do copy "$p"; done
	pkgs="$pkgs"$'\n'"$more"
done
chmod -R u+w "$dst"
echo "$version" >"$dst/UPSTREAM"
for patch in third_party/gvisor-patches/*.patch; do
	[ -e "$patch" ] || continue
	patch -s -p1 -d "$dst" <"$patch"
done
echo "third_party/gvisor: gvisor.dev/gvisor@$version, $(echo "$pkgs" | wc -l) packages, $(ls third_party/gvisor-patches/*.patch 2>/dev/null | wc -l) patches"
