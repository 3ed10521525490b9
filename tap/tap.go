// Package tap opens and configures a Linux tap device. It runs inside the
// target network namespace (in the nsjoin child) and starts no goroutines.
//
// songgao/water is not used: it hides the fd behind an io.ReadWriteCloser,
// cannot attach with IFF_VNET_HDR, and we need the raw fd to pass it over
// SCM_RIGHTS and to hand it to our own link endpoint (package link; docs/design.md).
//
// It owns the fd until it hands it over. It must not import gVisor or any
// other usernet package: it runs in the nsjoin child.
package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
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

type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [40 - unix.IFNAMSIZ - 2]byte
}

// Open opens /dev/net/tun and creates or attaches to the tap named in opts.
// The returned file is in non-blocking mode and owned by the caller.
func Open(opts Options) (*os.File, error) {
	if err := ValidateName(opts.Name); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req ifreq
	copy(req.name[:], opts.Name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if opts.VnetHdr {
		req.flags |= unix.IFF_VNET_HDR
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		if errno == unix.EINVAL {
			return nil, fmt.Errorf("create tap %s: %w (does a non-tap device of that name exist?)", opts.Name, errno)
		}
		return nil, fmt.Errorf("create tap %s: %w", opts.Name, errno)
	}
	if opts.VnetHdr {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, Offloads); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("enable offloads on tap %s: %w", opts.Name, err)
		}
	}
	return os.NewFile(uintptr(fd), "tap:"+opts.Name), nil
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
	MTU     int
	MAC     net.HardwareAddr // nil: keep the kernel's random one
	Addr    netip.Prefix     // e.g. 10.0.2.100/24
	Gateway netip.Addr       // default route via this address
	// Addr6 and Gateway6 do the same for IPv6 (pasta's --config-net),
	// the address without duplicate address detection: it is the host's,
	// and nobody else is on the link. Gateway6 may be link-local.
	Addr6    netip.Prefix
	Gateway6 netip.Addr
}

// LoopbackUp brings the namespace's lo up (pasta does, configured or not).
func LoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// Configure brings lo and the tap up, sets MTU, MAC and address, and adds the
// default route, as slirp4netns --configure does. It must run inside the
// namespace with CAP_NET_ADMIN there.
func Configure(name string, cfg Config) error {
	if err := LoopbackUp(); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if cfg.MTU > 0 {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("set mtu %d on %s: %w", cfg.MTU, name, err)
		}
	}
	if len(cfg.MAC) > 0 {
		if err := netlink.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return fmt.Errorf("set mac %s on %s: %w", cfg.MAC, name, err)
		}
	}
	if cfg.Addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), cfg.Addr.Addr().BitLen())}}
		if err := netlink.AddrReplace(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", cfg.Addr, name, err)
		}
	}
	if cfg.Addr6.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr6.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr6.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", cfg.Addr6, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	for _, gw := range []netip.Addr{cfg.Gateway, cfg.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add default route via %s on %s: %w", gw, name, err)
		}
	}
	return nil
}
