// Package tap says how a Linux tap device is opened and configured: the
// TUNSETIFF flags and offloads, and the rtnetlink messages of
// `--configure`. nsjoin's child, inside the target's namespaces, makes the
// system calls (it runs no Go); this package does no I/O.
//
// songgao/water is not used: it hides the fd behind an io.ReadWriteCloser,
// cannot attach with IFF_VNET_HDR, and we need the raw fd to hand it to our
// own link endpoint (package link; docs/design.md).
package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/usernet/usernet/netplan"
	"golang.org/x/sys/unix"
)

// MaxNameLen is the longest interface name the kernel accepts (IFNAMSIZ-1).
const MaxNameLen = unix.IFNAMSIZ - 1

// ValidateName reports whether name can be a tap device name.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("tap name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("tap name %q is too long (%d bytes, at most %d)", name, len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("tap name %q is not valid", name)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("tap name %q has an invalid character %q", name, c)
		}
	}
	return nil
}

// Options say how to open the tap.
type Options struct {
	// Name of the device; created if missing, attached to if it exists
	// (rootlesskit creates tap0 itself with `ip tuntap add`).
	Name string
	// VnetHdr asks for IFF_VNET_HDR (a virtio_net_hdr of VnetHdrLen
	// bytes before every frame, both ways) and turns on the offloads that
	// let the namespace's kernel hand over, and take, 64 KiB TCP segments
	// with partial checksums (TSO4, TSO6, CSUM; see Offloads).
	VnetHdr bool
}

// Flags are the TUNSETIFF flags that open the tap as opts say.
func Flags(opts Options) uint16 {
	f := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if opts.VnetHdr {
		f |= unix.IFF_VNET_HDR
	}
	return f
}

// VnetHdrLen is the size of the virtio_net_hdr the kernel puts before every
// frame of a tap opened with IFF_VNET_HDR (its default TUNSETVNETHDRSZ).
const VnetHdrLen = 10

// Offloads is what usernet asks of a vnet-header tap (TUNSETOFFLOAD): the
// reader takes partial checksums and TCP segments of up to 64 KiB over
// IPv4 and IPv6. Not UDP segmentation (TUN_F_USO4/6): gVisor has no way
// to take a UDP super-packet apart.
const Offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// Config is what `--configure` sets up on the tap.
type Config struct {
	MTU int
	MAC net.HardwareAddr // nil: keep the kernel's random one
	// Addrs are the tap's addresses, in order (e.g. 10.0.2.100/24).
	// IPv6 ones go without duplicate address detection (pasta's
	// --config-net): they are the host's, and nobody else is on the link.
	Addrs []netip.Prefix
	// NoBroadcast gives the IPv4 addresses no broadcast address (else
	// the last of their network).
	NoBroadcast bool
	// Gateway and Gateway6 give a default route each when Routes is
	// empty. Gateway6 may be link-local.
	Gateway, Gateway6 netip.Addr
	// Routes, when not empty, are the routes instead (pasta's copies of
	// the host's), added in order, IPv4 ones first.
	Routes []netplan.Route
}
