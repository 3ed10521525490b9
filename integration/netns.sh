#!/usr/bin/env bash
# netns.sh CMD [ARG]...: run CMD as root inside a private "host" network namespace
# wired to a fake internet, so that nothing usernet or a test sends can leave the machine.
#
#  machine's root netns: untouched (no interface, route or address is added there)
#
#  ┌─ netns usernet-host-PID ─────────────────────┐     ┌─ netns usernet-inet-PID ──────────────────┐
#  │ lo  127.0.0.1/8  ::1/128                     │     │ lo  (also local: 10.0.2.0/24, fd00::/64   │
#  │ uh0 198.51.100.1/24  2001:db8::1/64   veth ──┼─────┼── ui0 198.51.100.254/24  2001:db8::254/64 │
#  │ default via 198.51.100.254 / 2001:db8::254   │     │     = leak catchers, see below)           │
#  │ ping_group_range 0..2^31-1                   │     │ test servers: the tests open sockets here │
#  │ /etc/resolv.conf → nameserver 127.0.0.53     │     │ with setns(2) on a locked thread           │
#  │                                              │     └────────────────────────────────────────────┘
#  │ CMD (go test ./integration) as root;         │
#  │ usernet as user usernet-test;                │
#  │  └─ target user+net namespaces (unshare)     │
#  │     with tap0 10.0.2.100, served by usernet  │
#  └──────────────────────────────────────────────┘
#
# Addresses come from documentation ranges (RFC 5737, RFC 3849) and exist only in these
# namespaces. The fake internet treats the whole virtual network (10.0.2.0/24, fd00::/64) as
# local, so a packet that usernet wrongly proxies "to the host network" for 10.0.2.3 (say,
# with --disable-dns) lands in the fake internet, where a test can notice it, instead of
# leaving the machine (slirp4netns --disable-dns sent .3:53 to the real network: usernet must never do that).
#
# CMD gets these variables:
#   USERNET_NETNS_HOST, USERNET_NETNS_INET   names (ip netns; files under /run/netns)
#   USERNET_INET4, USERNET_INET6             the fake-internet host's addresses
#   USERNET_HOST4, USERNET_HOST6             the private host's uplink addresses
#   USERNET_RESOLV_NS                        the nameserver in the host netns's resolv.conf
# Both namespaces and /etc/netns/usernet-host-PID are removed on exit.
set -euo pipefail

if [ "$#" -eq 0 ]; then
	echo "usage: $0 CMD [ARG]..." >&2
	exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "$0: must run as root (creates network namespaces)" >&2
	exit 1
fi

host=usernet-host-$$
inet=usernet-inet-$$

cleanup() {
	local ns pid
	for ns in "$host" "$inet"; do
		# Only processes started by CMD can be in these namespaces.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "/etc/netns/$host"
	rmdir /etc/netns 2>/dev/null || true # only if no one else uses it
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$host"
ip netns add "$inet"
for ns in "$host" "$inet"; do
	# No duplicate address detection: addresses (link-local ones too) work at once.
	ip netns exec "$ns" sh -c 'for f in all default; do echo 0 > /proc/sys/net/ipv6/conf/$f/accept_dad; done'
	ip -n "$ns" link set lo up
done
# Created inside the host netns, so the veth never appears in the machine's root netns.
ip -n "$host" link add uh0 type veth peer name ui0 netns "$inet"
ip -n "$host" addr add 198.51.100.1/24 dev uh0
ip -n "$host" addr add 2001:db8::1/64 dev uh0 nodad
ip -n "$inet" addr add 198.51.100.254/24 dev ui0
ip -n "$inet" addr add 2001:db8::254/64 dev ui0 nodad
ip -n "$host" link set uh0 up
ip -n "$inet" link set ui0 up
ip -n "$host" route add default via 198.51.100.254
ip -n "$host" -6 route add default via 2001:db8::254
# Leak catchers: see above.
ip -n "$inet" route add local 10.0.2.0/24 dev lo
ip -n "$inet" -6 route add local fd00::/64 dev lo
# Unprivileged ICMP echo sockets for usernet (and slirp4netns) running as usernet-test.
ip netns exec "$host" sh -c 'echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range'
# "ip netns exec" bind-mounts this over /etc/resolv.conf: whatever reads the default
# resolver in there gets a loopback address the tests serve, never the machine's resolver.
mkdir -p "/etc/netns/$host"
echo "nameserver 127.0.0.53" > "/etc/netns/$host/resolv.conf"

export USERNET_NETNS_HOST=$host USERNET_NETNS_INET=$inet
export USERNET_INET4=198.51.100.254 USERNET_INET6=2001:db8::254
export USERNET_HOST4=198.51.100.1 USERNET_HOST6=2001:db8::1
export USERNET_RESOLV_NS=127.0.0.53
set +e
ip netns exec "$host" "$@"
rc=$?
set -e
exit "$rc"
