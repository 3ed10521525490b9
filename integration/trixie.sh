#!/usr/bin/env bash
# trixie.sh [ROOT]: build, once, a Debian trixie root file system holding the newer peers
# of the pasta tests (integration/pasta_test.go): Podman 5, passt (pasta) and rootlesskit 2.
# They are trixie packages, and this machine may be older; the tests run them inside ROOT
# with integration/trixie-exec, while usernet itself is built on the host.
#
# ROOT defaults to $USERNET_TRIXIE_ROOT, else /var/cache/usernet/trixie-root. Run as root.
# Idempotent: ROOT.stamp records the suite, mirror and package list of the last good build;
# when they still match nothing is done, otherwise the root is built afresh beside the old
# one and swapped in. USERNET_TRIXIE_REBUILD=1 rebuilds anyway (to pick up newer packages).
# On success ROOT/usernet-versions.txt lists the installed packages' versions.
#
# Network: only the Debian mirror named by this machine's apt sources.
set -euo pipefail

root=${1:-${USERNET_TRIXIE_ROOT:-/var/cache/usernet/trixie-root}}
suite=trixie
# What the tests run inside the root, and what those need that Podman does not pull in by
# itself without recommends: runc (the OCI runtime; crun refuses a cgroup v1/v2 hybrid such
# as the suite's, "cgroups in hybrid mode not supported"), catatonit (the rootless pause
# process), uidmap (newuidmap for rootless user namespaces), busybox-static (the container
# image), iproute2 (rootlesskit 2.0 creates the tap with ip).
packages=(podman passt rootlesskit uidmap runc conmon catatonit busybox-static iproute2)

if [ "$(id -u)" -ne 0 ]; then
	echo "$0: run as root (debootstrap, chroot)" >&2
	exit 1
fi

# The mirror of the machine's Debian sources: the first URI that is not the security
# archive, from deb822 files or the one-line format.
mirror() {
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -e "$f" ] || continue
		uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
		if [ -n "$uri" ]; then
			echo "$uri"
			return
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -e "$f" ] || continue
		uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($i !~ /security/) { print $i; exit } break } }' "$f")
		if [ -n "$uri" ]; then
			echo "$uri"
			return
		fi
	done
	echo http://deb.debian.org/debian
}
url=$(mirror)
want="suite=$suite mirror=$url packages=${packages[*]}"

mkdir -p "$(dirname "$root")"
# Concurrent test runs share the root: one builds, the others wait for it.
exec 9>"$root.lock"
flock 9

if [ "${USERNET_TRIXIE_REBUILD:-}" != 1 ] && [ -d "$root" ] && [ "$(cat "$root.stamp" 2>/dev/null)" = "$want" ]; then
	echo "trixie root $root is up to date ($(awk '$1 == "podman" || $1 == "passt" || $1 == "rootlesskit" { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$root/usernet-versions.txt"))"
	exit 0
fi

start=$(date +%s)
if ! command -v debootstrap >/dev/null; then
	echo "installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap </dev/null >/dev/null ||
		{
			apt-get update -qq </dev/null
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap </dev/null >/dev/null
		}
fi
scripts=/usr/share/debootstrap/scripts
if [ ! -e "$scripts/$suite" ]; then
	# An older debootstrap without a script for the suite: trixie bootstraps like sid.
	[ -e "$scripts/sid" ] || {
		echo "$0: $scripts has neither $suite nor sid" >&2
		exit 1
	}
	script=$scripts/sid
else
	script=$scripts/$suite
fi

new=$root.new
umount_all() {
	local m
	# Deepest first. debootstrap mounts /proc and /sys in the target while it runs, and an
	# interrupted run leaves them there.
	for m in $(awk -v p="$new/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
}
cleanup() {
	umount_all
	rm -rf --one-file-system "$new"
}
trap cleanup EXIT
cleanup

echo "debootstrap $suite from $url into $new"
# minbase plus, from the start, the packages of the tests: one dependency resolution, one
# download. --no-check-gpg is not used: the machine's keyring verifies the Release file.
include=$(
	IFS=,
	echo "${packages[*]}"
)
if ! debootstrap --variant=minbase --include="$include" "$suite" "$new" "$url" "$script" >"$new.log" 2>&1; then
	tail -n 30 "$new.log" >&2
	echo "$0: debootstrap failed; full log in $new.log" >&2
	exit 1
fi

# chroot_run CMD...: run CMD in the new root, in a private mount namespace with /proc,
# /sys and /dev, so that nothing is left mounted afterwards.
chroot_run() {
	unshare --mount --propagation private -- sh -c '
		new=$1; shift
		mount -t proc proc "$new/proc" && mount --rbind /sys "$new/sys" && mount --rbind /dev "$new/dev" &&
		exec chroot "$new" "$@"' sh "$new" "$@"
}

# debootstrap resolves --include without the packages' Recommends but also without apt's
# full resolver; apt completes (and checks) the set. No documentation in the root.
cat >"$new/etc/dpkg/dpkg.cfg.d/01-usernet-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$new/etc/apt/apt.conf.d/01-usernet"
if ! chroot_run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" </dev/null >>"$new.log" 2>&1; then
	tail -n 30 "$new.log" >&2
	echo "$0: apt-get install in the root failed; full log in $new.log" >&2
	exit 1
fi
chroot_run apt-get clean
rm -rf "$new"/var/lib/apt/lists/* "$new"/usr/share/doc/* "$new"/usr/share/man/* "$new"/usr/share/locale/*

# Files the tests bind-mount the private host namespace's versions over (trixie-exec), and
# nothing of this machine's network: debootstrap copied its resolv.conf.
: >"$new/etc/resolv.conf"
chmod 644 "$new/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$new/etc/hosts"
touch "$new/etc/subuid" "$new/etc/subgid"
mkdir -p "$new/.oldroot"

dpkg-query --admindir="$new/var/lib/dpkg" -W -f='${Package} ${Version}\n' | sort >"$new/usernet-versions.txt"
for p in "${packages[@]}"; do
	grep -q "^$p " "$new/usernet-versions.txt" || {
		echo "$0: $p is not installed in the root" >&2
		exit 1
	}
done

# Swap in the new root; an old one is removed without crossing into anything mounted in it.
if [ -d "$root" ]; then
	rm -rf --one-file-system "$root.old"
	mv "$root" "$root.old"
fi
mv "$new" "$root"
mv "$new.log" "$root.log"
rm -rf --one-file-system "$root.old"
echo "$want" >"$root.stamp"
trap - EXIT
echo "trixie root $root built in $(($(date +%s) - start)) s, $(du -sh --one-file-system "$root" | cut -f1):"
grep -E '^(podman|passt|rootlesskit|runc|conmon|busybox-static) ' "$root/usernet-versions.txt" | sed 's/^/  /'
