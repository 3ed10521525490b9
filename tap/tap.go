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

	"github.com/usernet/usernet/netplan"
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

// Configure brings lo and the tap up, sets MTU, MAC and addresses, and adds
// the routes, as slirp4netns --configure and pasta --config-net do. It must
// run inside the namespace with CAP_NET_ADMIN there.
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
	for _, p := range cfg.Addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		} else if cfg.NoBroadcast {
			a.Broadcast = net.IPv4zero
		}
		if err := netlink.AddrReplace(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if len(cfg.Routes) == 0 {
		for _, gw := range []netip.Addr{cfg.Gateway, cfg.Gateway6} {
			if !gw.IsValid() {
				continue
			}
			r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("add default route via %s on %s: %w", gw, name, err)
			}
		}
	}
	// Routes on the link first: the gateways of the others may be
	// reachable only through them.
	var later []netplan.Route
	for _, r := range cfg.Routes {
		if r.Gateway.IsValid() {
			later = append(later, r)
			continue
		}
		if err := addRoute(link.Attrs().Index, r); err != nil {
			return fmt.Errorf("add route to %v on %s: %w", r.Dst, name, err)
		}
	}
	for _, r := range later {
		if err := addRoute(link.Attrs().Index, r); err != nil {
			return fmt.Errorf("add route to %v via %v on %s: %w", r.Dst, r.Gateway, name, err)
		}
	}
	return nil
}

// addRoute adds r out of the interface. A route the kernel already has
// (the prefix route of an address, made when it was added) is not an
// error. It is created without NLM_F_EXCL, as pasta does: an IPv4
// copy of a prefix route then stands beside the kernel's own, which has
// a preferred source.
func addRoute(ifindex int, r netplan.Route) error {
	nr := &netlink.Route{
		LinkIndex: ifindex,
		Dst:       &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Priority:  r.Metric,
		Protocol:  netlink.RouteProtocol(r.Protocol),
		Scope:     netlink.Scope(r.Scope),
		Type:      r.Type,
		Flags:     r.Flags,
	}
	if r.Gateway.IsValid() {
		nr.Gw = r.Gateway.AsSlice()
	}
	err := netlink.RouteAddEcmp(nr)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
