package tap

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/usernet/usernet/netplan"
	"golang.org/x/sys/unix"
)

// A Message is one rtnetlink request, sent in the namespace in order; the
// first that fails stops the configuration.
type Message struct {
	// Bytes is the whole message, header included (its sequence number
	// is the sender's).
	Bytes []byte
	// IndexAt, when not 0, is the offset of a uint32 that the sender sets
	// to the tap's interface index, known only once the tap exists.
	IndexAt int
	// ExistOK: the kernel's EEXIST means it is there already.
	ExistOK bool
	// What it does, for the error ("set mtu 1500 on tap0").
	What string
}

// LoopbackMessages bring the namespace's lo up (pasta does, configured or
// not).
func LoopbackMessages() []Message {
	m := newMsg(unix.RTM_NEWLINK, 0)
	m.ifinfo(unix.IFF_UP, unix.IFF_UP)
	m.attr(unix.IFLA_IFNAME, append([]byte("lo"), 0)) // by name: no index to look up
	return []Message{m.done(0, "bring lo up")}
}

// ConfigMessages bring lo and the tap named name up, set MTU, MAC and
// addresses, and add the routes, as slirp4netns --configure and pasta
// --config-net do. They need CAP_NET_ADMIN in the namespace.
func ConfigMessages(name string, cfg Config) []Message {
	msgs := LoopbackMessages()
	const indexAt = unix.SizeofNlMsghdr + 4 // ifinfomsg's and ifaddrmsg's index
	if cfg.MTU > 0 {
		m := newMsg(unix.RTM_SETLINK, 0)
		m.ifinfo(0, 0)
		m.attr(unix.IFLA_MTU, u32(uint32(cfg.MTU)))
		msgs = append(msgs, m.done(indexAt, fmt.Sprintf("set mtu %d on %s", cfg.MTU, name)))
	}
	if len(cfg.MAC) > 0 {
		m := newMsg(unix.RTM_SETLINK, 0)
		m.ifinfo(0, 0)
		m.attr(unix.IFLA_ADDRESS, cfg.MAC)
		msgs = append(msgs, m.done(indexAt, fmt.Sprintf("set mac %s on %s", cfg.MAC, name)))
	}
	for _, p := range cfg.Addrs {
		msgs = append(msgs, addrMessage(name, p, cfg.NoBroadcast))
	}
	up := newMsg(unix.RTM_NEWLINK, 0)
	up.ifinfo(unix.IFF_UP, unix.IFF_UP)
	msgs = append(msgs, up.done(indexAt, "bring "+name+" up"))
	if len(cfg.Routes) == 0 {
		for _, gw := range []netip.Addr{cfg.Gateway, cfg.Gateway6} {
			if gw.IsValid() {
				r := netplan.Route{Dst: netip.PrefixFrom(unspecified(gw), 0), Gateway: gw}
				msgs = append(msgs, routeMessage(r, unix.NLM_F_REPLACE, fmt.Sprintf("add default route via %s on %s", gw, name)))
			}
		}
	}
	// Routes on the link first: the gateways of the others may be
	// reachable only through them. Without NLM_F_EXCL, as pasta adds
	// them: an IPv4 copy of a prefix route then stands beside the
	// kernel's own, which has a preferred source; one the kernel already
	// has (the prefix route of an address) is no error.
	var later []netplan.Route
	for _, r := range cfg.Routes {
		if r.Gateway.IsValid() {
			later = append(later, r)
			continue
		}
		m := routeMessage(r, 0, fmt.Sprintf("add route to %v on %s", r.Dst, name))
		m.ExistOK = true
		msgs = append(msgs, m)
	}
	for _, r := range later {
		m := routeMessage(r, 0, fmt.Sprintf("add route to %v via %v on %s", r.Dst, r.Gateway, name))
		m.ExistOK = true
		msgs = append(msgs, m)
	}
	return msgs
}

// addrMessage replaces the address p on the tap. IPv6 ones go without
// duplicate address detection; IPv4 ones get the last address of their
// network as broadcast (none with noBroadcast, or from /31 on).
func addrMessage(name string, p netip.Prefix, noBroadcast bool) Message {
	m := newMsg(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	a := p.Addr().Unmap()
	family, flags := byte(unix.AF_INET), byte(0)
	if a.Is6() {
		family, flags = unix.AF_INET6, unix.IFA_F_NODAD
	}
	// ifaddrmsg: family, prefixlen, flags, scope, index (the tap's).
	m.b = append(m.b, family, byte(p.Bits()), flags, 0, 0, 0, 0, 0)
	m.attr(unix.IFA_LOCAL, a.AsSlice())
	m.attr(unix.IFA_ADDRESS, a.AsSlice())
	if a.Is4() && !noBroadcast && p.Bits() < 31 {
		b := a.As4()
		mask := ^uint32(0) >> p.Bits()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])|mask)
		m.attr(unix.IFA_BROADCAST, b[:])
	}
	return m.done(unix.SizeofNlMsghdr+4, fmt.Sprintf("add address %s to %s", p, name))
}

// routeMessage adds r out of the tap (the main table; rtnetlink's
// defaults where r has 0).
func routeMessage(r netplan.Route, flags uint16, what string) Message {
	m := newMsg(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|flags)
	dst := r.Dst.Addr().Unmap()
	family := byte(unix.AF_INET)
	if dst.Is6() {
		family = unix.AF_INET6
	}
	proto, typ := byte(unix.RTPROT_BOOT), byte(unix.RTN_UNICAST)
	if r.Protocol > 0 {
		proto = byte(r.Protocol)
	}
	if r.Type > 0 {
		typ = byte(r.Type)
	}
	// rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
	m.b = append(m.b, family, byte(r.Dst.Bits()), 0, 0, unix.RT_TABLE_MAIN, proto, byte(r.Scope), typ)
	m.b = binary.NativeEndian.AppendUint32(m.b, uint32(r.Flags))
	if r.Dst.Bits() > 0 {
		m.attr(unix.RTA_DST, dst.AsSlice())
	}
	if r.Gateway.IsValid() {
		m.attr(unix.RTA_GATEWAY, r.Gateway.Unmap().AsSlice())
	}
	if r.Metric > 0 {
		m.attr(unix.RTA_PRIORITY, u32(uint32(r.Metric)))
	}
	at := len(m.b) + unix.SizeofRtAttr
	m.attr(unix.RTA_OIF, u32(0))
	return m.done(at, what)
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// msg builds one request: an nlmsghdr (length filled in by done), then the
// family header and attributes.
type msg struct{ b []byte }

func newMsg(typ uint16, flags uint16) *msg {
	m := &msg{b: make([]byte, unix.SizeofNlMsghdr, 64)}
	binary.NativeEndian.PutUint16(m.b[4:], typ)
	binary.NativeEndian.PutUint16(m.b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	return m
}

// ifinfo appends an ifinfomsg (AF_UNSPEC, index 0: the sender's or by name).
func (m *msg) ifinfo(flags, change uint32) {
	m.b = append(m.b, unix.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0)
	m.b = binary.NativeEndian.AppendUint32(m.b, flags)
	m.b = binary.NativeEndian.AppendUint32(m.b, change)
}

func (m *msg) attr(typ uint16, data []byte) {
	n := unix.SizeofRtAttr + len(data)
	m.b = binary.NativeEndian.AppendUint16(m.b, uint16(n))
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = append(m.b, data...)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *msg) done(indexAt int, what string) Message {
	binary.NativeEndian.PutUint32(m.b, uint32(len(m.b)))
	return Message{Bytes: m.b, IndexAt: indexAt, What: what}
}
