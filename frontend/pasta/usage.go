package pasta

import (
	"fmt"
	"io"
	"strings"
)

// Usage writes the usage text in pasta's layout (tab-aligned, a
// "default:" line under an option where it has one): the three synopsis
// lines with argv0, then the pasta-mode options Parse accepts, then the
// Usage lines of extra. pasta writes it to stdout for --help and to
// stderr after a *UsageError.
func Usage(w io.Writer, argv0 string, extra ...ExtraOption) {
	fmt.Fprintf(w, "Usage: %s [OPTION]... [COMMAND] [ARGS]...\n", argv0)
	fmt.Fprintf(w, "       %s [OPTION]... PID\n", argv0)
	fmt.Fprintf(w, "       %s [OPTION]... --netns [PATH|NAME]\n", argv0)
	io.WriteString(w, usageText)
	for _, e := range extra {
		io.WriteString(w, strings.TrimSuffix(e.Usage, "\n")+"\n")
	}
}

const usageText = `
Without PID or --netns, run COMMAND, or a login shell, in new user and
network namespaces connected to the network through this program.

  -d, --debug		Verbose messages
      --trace		More verbose still; implies --debug
  -q, --quiet		No informational messages
  -f, --foreground	Stay in the foreground
    default: go to the background once ready
  -l, --log-file PATH	Log to this file only
  --log-size BYTES	Largest size of the log file
    default: 1 MiB
  --runas UID|UID:GID	Run as this user and group, numeric or by name
    default: the current user; "nobody" if root in the initial namespace
  -h, --help		Print this text and exit
  --version		Print the version and exit
  -I, --ns-ifname NAME	Name of the interface in the namespace
    default: the name of the host's template interface
  -F, --fd FD		Use FD as an already connected socket
  -p, --pcap FILE	Capture the namespace's traffic to a pcap file
  -P, --pid FILE	Write the PID to FILE
  -m, --mtu MTU		MTU of the namespace's interface; 0: leave it alone
    default: 65520, the largest 802.3 frame less its header, rounded to 4
  -a, --address ADDR	IPv4 or IPv6 address of the namespace
    once per family
    default: the addresses of the interface with the default route
  -n, --netmask MASK	IPv4 netmask, dotted or a prefix length
    default: the host address's netmask
  -M, --mac-addr ADDR	Our MAC address on the interface
    default: 9a:55:9a:55:9a:55 (locally administered)
  -g, --gateway ADDR	IPv4 or IPv6 gateway of the namespace
    default: the gateway of the interface with the default route
  -i, --interface NAME	Host interface to take addresses and routes from
    default: --outbound-if4 and --outbound-if6 if given,
             else the interface with the first default route
  -o, --outbound ADDR	Source address for outbound sockets
    once per family
    default: chosen by the routing tables
  --outbound-if4 NAME	Interface to bind outbound IPv4 sockets to
    default: the interface of the default route
  --outbound-if6 NAME	Interface to bind outbound IPv6 sockets to
    default: the interface of the default route
  -D, --dns ADDR	IPv4 or IPv6 nameserver to offer; repeatable
    'none' offers none
    default: none
  -S, --search LIST	Search domain to offer; repeatable
    'none' offers none
    default: none
  -H, --hostname NAME	Hostname to give the namespace
  --fqdn NAME		FQDN to give DHCP clients
  --dhcp-dns		Offer the nameservers by DHCP, DHCPv6 and NDP
  --dhcp-search		Offer the search list by DHCP, DHCPv6 and NDP
  --map-host-loopback ADDR	Make ADDR reach the host's loopback
    once per family; 'none' for no such address
    default: the gateway address
  --map-guest-addr ADDR	Make ADDR reach the host address the namespace has
    once per family
    default: none
  --dns-forward ADDR	Forward DNS queries sent to ADDR
    once per family
    default: no DNS forwarding
  --dns-host ADDR	Nameserver to forward them to
    once per family
    default: the first nameserver of the host's /etc/resolv.conf
  --no-tcp		No TCP
  --no-udp		No UDP
  --no-icmp		No ICMP and ICMPv6
  --no-dhcp		No DHCP server
  --no-ndp		No NDP replies
  --no-dhcpv6		No DHCPv6 server
  --no-ra		No router advertisements
  --freebind		Bind forwarded ports to any address, even absent
  --no-map-gw		Don't make the gateway address reach the host
  -4, --ipv4-only	IPv4 only
  -6, --ipv6-only	IPv6 only
  -t, --tcp-ports SPEC	Forward TCP ports from the host to the namespace
    repeatable; SPEC is one of:
      'none': no ports
      'auto': the ports listening in the namespace, followed as they change
      a comma-separated list of ports or ranges (A-B), each optionally
        forwarded to another port or range of the same size (:C-D),
        the whole list optionally preceded by ADDR/, [ADDR]/, ADDR%IF/
        or %IF/ to bind to that address or interface only; a port or
        range prefixed by '~' is left out. Examples:
        -t 22		Port 22 to port 22 in the namespace
        -t 22:23	Port 22 to port 23
        -t 22,25	Ports 22 and 25 to the same ports
        -t 22-80	Ports 22 to 80
        -t 22-80:32-90	Ports 22 to 80 to ports 32 to 90
        -t 192.0.2.1/5	Port 5 of 192.0.2.1 to port 5
        -t 5-25,~10-20	Ports 5 to 9 and 21 to 25
        -t ~25		Every port but 25 and the ephemeral ones
    default: auto
    ports bound to IPv6 are forwarded for IPv4 too
  -u, --udp-ports SPEC	Forward UDP ports, as -t
    default: auto
    with '-t auto' and no -u, also the UDP ports of the forwarded TCP ports
  -T, --tcp-ns SPEC	Forward TCP ports from the namespace to the host
    SPEC as for -t, without an address or interface
    default: auto
  -U, --udp-ns SPEC	Forward UDP ports from the namespace to the host
    SPEC as for -T
    default: auto
  --host-lo-to-ns-lo	Connections from the host's loopback reach the
			namespace's loopback
  --userns NSPATH	User namespace to join
  --netns PATH|NAME	Network namespace to join
  --netns-only		Join no user namespace
    implied by --netns without --userns
  --no-netns-quit	Keep running when the namespace's file is deleted
  --config-net		Configure addresses, routes and MTU in the namespace
  --no-copy-routes	DEPRECATED: with --config-net, copy no routes
  --no-copy-addrs	DEPRECATED: with --config-net, copy no addresses
  --ns-mac-addr ADDR	MAC address of the namespace's interface
  --no-splice		Don't splice connections from the host's loopback
`
