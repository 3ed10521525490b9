#!/usr/bin/env bash
# bench/run.sh [--quick] [OPTIONS]: benchmark usernet against slirp4netns and pasta (Debian 12's
# and, from the trixie root of integration/trixie.sh, pasta 2025), and usernet called as pasta.
# Run as root on Debian. See bench/README.md for what it measures and how.
#
#   1. installs what it needs from Debian (nothing when it is there already),
#   2. builds usernet and the harness (bench/cmd/usernet-bench) into a temp dir,
#   3. makes a private network namespace (and PID namespace) with nothing in it but lo and a
#      veth pair whose default route leads nowhere (pasta insists on a default route), so
#      that nothing any backend does can leave the machine,
#   4. in there, as the unprivileged user usernet-bench, runs `usernet-bench drive`: every
#      backend in its own fresh `unshare --user --map-root-user --net --mount` namespace,
#      every workload, medians of --runs runs,
#   5. writes the report: docs/bench/ (full run) or a temp dir (--quick).
#
# Options:
#   --quick            smoke mode for CI: 1 run of each workload, 1 s each, in reduced forms
#                      (rr/crr with 1 and 16 clients, 100 UDP flows, 10 instances at once, RSS
#                      2 s after the close), report in a temp dir, exit 1 if anything failed.
#                      Takes about two minutes (plus the build).
#   --runs N           runs of each workload (default 5)
#   --duration SEC     length of each timed run (default 5)
#   --backends LIST    default usernet,usernet-pasta,slirp4netns,pasta,pasta-2025 (usernet
#                      first: ratios are against it). usernet-pasta is usernet called as pasta,
#                      with pasta's arguments; pasta is this machine's (Debian 12: 2023);
#                      pasta-2025 is the passt of the Debian trixie root that
#                      integration/trixie.sh builds ($USERNET_TRIXIE_ROOT, default
#                      /var/cache/usernet/trixie-root): without that root it is n/a, or an
#                      error if LIST names it. usernet-nooffload is usernet without vnet
#                      headers/offloads (A/B runs); usernet-gvisor is usernet with
#                      USERNET_DIRECT_TCP=0 (outbound TCP through gVisor, not the direct path)
#   --workloads RE     only the workloads whose name matches RE (tcp_n2h_65520, tcp_h2n_65520,
#                      tcp_n2h_1500, tcp_h2n_1500, tcp_fwd_65520, tcp_fwdr_65520, udp_1g,
#                      udp_max, udp_flows, loopback, rr, crr, rr_fwd, crr_fwd, and with N
#                      clients rr_cN, crr_cN, rr_fwd_cN, crr_fwd_cN for N in 4, 16, 64);
#                      memory and startup always run, the host loopback whenever a tcp_
#                      workload does. For quick A/B runs, not for the report.
#   --out DIR          report directory (default docs/bench, or a temp dir with --quick)
#   --provisional TXT  a warning printed at the top of the report
#   --rev REV          build usernet from git revision REV (git archive, read-only) instead
#                      of the working tree, e.g. --rev HEAD while others have edits in flight
#   --usernet-bin PATH use this usernet binary instead of building one
#   --keep             keep the temp dir (binaries, raw results, every process's log) after
#                      a full run; it is always kept after --quick or a failure
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
invocation="bench/run.sh$(printf ' %q' "$@")"

quick=0 runs=5 duration=5 backends=usernet,usernet-pasta,slirp4netns,pasta,pasta-2025 backends_given=0 out= provisional= rev= usernet_bin= keep_work=0 workloads=
while [ "$#" -gt 0 ]; do
	case "$1" in
	--quick) quick=1 ;;
	--runs) runs=$2; shift ;;
	--duration) duration=$2; shift ;;
	--backends) backends=$2 backends_given=1; shift ;;
	--workloads) workloads=$2; shift ;;
	--out) out=$2; shift ;;
	--provisional) provisional=$2; shift ;;
	--rev) rev=$2; shift ;;
	--usernet-bin) usernet_bin=$2; shift ;;
	--keep) keep_work=1 ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done

if [ "$(id -u)" -ne 0 ]; then
	echo "run.sh: run as root (it installs packages, makes namespaces and the user usernet-bench)" >&2
	exit 1
fi
started=$(date +%s)
step() { printf '== %s (%ds)\n' "$*" "$(($(date +%s) - started))"; }

step "packages"
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
command -v pasta >/dev/null || need+=(passt)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null && command -v nsenter >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
command -v useradd >/dev/null || need+=(passwd)
command -v gcc >/dev/null || need+=(gcc) # cgo: usernet joins namespaces in a C constructor
[ -e /usr/include/stdio.h ] || need+=(libc6-dev) # and libc.a: build.sh links statically
command -v git >/dev/null || need+=(git)
if [ "${#need[@]}" -gt 0 ]; then
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	timeout 600 apt-get update -qq </dev/null
	timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi
export PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
	echo "run.sh: no go in PATH; install Go $(sed -n 's/^go //p' go.mod) or later from https://go.dev/dl/" >&2
	exit 1
fi

# pasta-2025 runs from the trixie root without entering it (usernet-bench's pastaArgv0). Not
# built here: that takes minutes and a download; a default run goes on with it n/a.
trixie_root=${USERNET_TRIXIE_ROOT:-/var/cache/usernet/trixie-root}
if [[ ,$backends, == *,pasta-2025,* ]] && [ ! -x "$trixie_root/usr/bin/passt" ]; then
	if [ "$backends_given" = 1 ]; then
		echo "run.sh: --backends names pasta-2025, but $trixie_root has no usr/bin/passt: build it with integration/trixie.sh (or set USERNET_TRIXIE_ROOT)" >&2
		exit 1
	fi
	echo "run.sh: no trixie root at $trixie_root (integration/trixie.sh builds it): pasta-2025 will be n/a"
fi

step "user usernet-bench, /dev/net/tun, user namespaces"
id usernet-bench >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin usernet-bench
[ -c /dev/net/tun ] || { echo "run.sh: no /dev/net/tun" >&2; exit 1; }
[ "$(stat -c %a /dev/net/tun)" = 666 ] || chmod 0666 /dev/net/tun
if [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo 1)" != 1 ]; then
	echo "run.sh: unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=1 turns them on)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/usernet-bench.XXXXXX)
chmod 0755 "$work"
mkdir -p "$work/bin" "$work/run"
chown usernet-bench: "$work/run"
upid=
cleanup() {
	# The driver is PID 1 of its PID namespace: when unshare goes, the kernel kills everything
	# the run started, and the namespaces go with them.
	if [ -n "$upid" ] && kill -0 "$upid" 2>/dev/null; then
		kill -TERM "$upid" 2>/dev/null || true
		sleep 2
		kill -KILL "$upid" 2>/dev/null || true
	fi
	if [ "$quick" = 0 ] && [ "$keep_work" = 0 ]; then
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "build"
if [ -n "$usernet_bin" ]; then
	install -m 0755 "$usernet_bin" "$work/bin/usernet"
	install -m 0755 "$usernet_bin" "$work/bin/usernet-debug" # usernet-nooffload: bring a usernet_debug build
	usernet_version="binary $usernet_bin"
elif [ -n "$rev" ]; then
	mkdir "$work/src"
	git -C "$repo" archive "$rev" | tar -x -C "$work/src"
	if [ -e "$work/src/build.sh" ]; then
		timeout 1200 sh "$work/src/build.sh" "$work/bin"
	else # a revision from before build.sh
		(cd "$work/src" && timeout 1200 go build -o "$work/bin/usernet" ./cmd/usernet &&
			timeout 1200 go build -tags usernet_debug -o "$work/bin/usernet-debug" ./cmd/usernet)
	fi
	usernet_version="git $(git -C "$repo" rev-parse --short "$rev")"
	[ "$(git -C "$repo" rev-parse --short "$rev")" = "$rev" ] || usernet_version+=" ($rev)"
else
	timeout 1200 ./build.sh "$work/bin"
	usernet_version="git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown), working tree"
fi
timeout 600 go build -o "$work/bin/usernet-bench" ./bench/cmd/usernet-bench
ln -s usernet "$work/bin/pasta" # usernet-pasta: usernet takes pasta's command line when called so
chmod 0755 "$work/bin" "$work/bin/"*

if [ "$quick" = 1 ]; then
	runs=1 duration=1 limit=300
	[ -n "$out" ] || out=$work/report
else
	limit=2700
	[ -n "$out" ] || out=$repo/docs/bench
fi

step "drive ($runs runs × ${duration} s; logs in $work/run/logs)"
# The private network namespace: lo, and bv0/bv1, a veth pair with both ends in here.
netns_setup='
set -e
ip link set lo up
ip link add bv0 type veth peer name bv1
ip addr add 198.51.100.1/24 dev bv0
ip link set bv1 up
ip link set bv0 up
ip route add default via 198.51.100.254 dev bv0
'
set +e
# shellcheck disable=SC2016
timeout --kill-after=30 "$limit" \
	unshare --net --pid --fork --kill-child --mount-proc -- \
	bash -c "$netns_setup"'
exec setpriv --reuid=usernet-bench --regid=usernet-bench --clear-groups -- "$@"' bash \
	env -i PATH="$PATH" HOME=/ "$work/bin/usernet-bench" drive \
	-out "$work/run" -runs "$runs" -duration "${duration}s" -backends "$backends" -workloads "$workloads" \
	$([ "$quick" = 1 ] && echo -quick) \
	-usernet "$work/bin/usernet" -usernet-debug "$work/bin/usernet-debug" -usernet-version "$usernet_version" \
	-usernet-pasta "$work/bin/pasta" -pasta-2025-root "$trixie_root" \
	-command "$invocation" &
upid=$!
wait "$upid"
rc=$?
upid=
set -e
if [ "$rc" -ne 0 ] || [ ! -s "$work/run/results.json" ]; then
	keep_work=1
	echo "run.sh: drive failed (exit $rc); logs in $work/run/logs" >&2
	exit 1
fi

step "report"
strict=()
[ "$quick" = 0 ] || strict=(-strict)
if ! "$work/bin/usernet-bench" report -in "$work/run/results.json" -out "$out" -provisional "$provisional" "${strict[@]}"; then
	keep_work=1
	echo "run.sh: report: problems above; logs in $work/run/logs" >&2
	exit 1
fi
step "done: $out/results.md"
