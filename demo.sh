#!/usr/bin/env bash
# demo.sh: usernet's main job on this machine. It builds usernet, starts a web server on the
# host's 127.0.0.1, and runs a command in a fresh unprivileged user+net namespace whose only
# way out is usernet: the command sees tap0 = 10.0.2.100/24 and fetches the page from the
# host through the gateway 10.0.2.2. Run as root, it drops to the user `nobody` first.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v gcc >/dev/null || need+=(gcc) # cgo: the namespace-join constructor
[ -e /usr/include/stdio.h ] || need+=(libc6-dev) # and libc.a: build.sh links statically
if [ "${#need[@]}" -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || { echo "demo.sh: please install: ${need[*]}" >&2; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

./build.sh bin
chmod 0755 bin bin/usernet

as_user=()
if [ "$(id -u)" -eq 0 ]; then
	[ "$(stat -c %a /dev/net/tun)" = 666 ] || chmod 0666 /dev/net/tun
	as_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi

www=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null; rm -rf "$www"' EXIT
echo "hello from the host's 127.0.0.1, served to an unprivileged namespace by usernet" >"$www/index.html"
chmod -R a+rX "$www"
python3 -m http.server --bind 127.0.0.1 --directory "$www" 18080 >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done

echo "+ usernet run --mtu=65520 -- sh -c 'ip -br addr; ip route; curl http://10.0.2.2:18080/'"
"${as_user[@]}" ./bin/usernet run --mtu=65520 -- sh -c '
	echo "uid in the namespace: $(id -u) (mapped from an unprivileged user)"
	ip -br addr show tap0
	ip route
	curl -sS --max-time 10 http://10.0.2.2:18080/'
