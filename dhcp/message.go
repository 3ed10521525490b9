// Package dhcp is the DHCPv4 server of usernet's virtual network: the
// message format (RFC 2131 §2, options per RFC 2132 and RFC 3396) and a
// lease table that hands out addresses the way libslirp's BOOTP/DHCP server
// does, so that clients that do not use slirp4netns --configure (busybox
// udhcpc, dhclient, systemd-networkd) get 10.0.2.15, 10.0.2.16, ...
//
// It is standard library only and does no I/O: package stack reads the
// requests from its gVisor endpoints, calls Server.Handle, and writes the
// Reply where Reply says (a client without an address needs it at layer 2,
// which a UDP socket cannot do).
//
// It owns the lease table. It must not import gVisor or any other usernet
// package: the stack uses dhcp, not the other way round.
package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// BOOTP ports (RFC 951).
const (
	ServerPort = 67
	ClientPort = 68
)

// BOOTP op codes.
const (
	OpRequest byte = 1
	OpReply   byte = 2
)

// FlagBroadcast is the BROADCAST bit of the flags field (RFC 2131 §2): the
// client cannot receive unicast IP datagrams before it is configured.
const FlagBroadcast uint16 = 0x8000

// MessageType is the value of option 53.
type MessageType byte

// DHCP message types (RFC 2132 §9.6).
const (
	Discover MessageType = 1
	Offer    MessageType = 2
	Request  MessageType = 3
	Decline  MessageType = 4
	Ack      MessageType = 5
	Nak      MessageType = 6
	Release  MessageType = 7
	Inform   MessageType = 8
)

func (t MessageType) String() string {
	switch t {
	case Discover:
		return "DHCPDISCOVER"
	case Offer:
		return "DHCPOFFER"
	case Request:
		return "DHCPREQUEST"
	case Decline:
		return "DHCPDECLINE"
	case Ack:
		return "DHCPACK"
	case Nak:
		return "DHCPNAK"
	case Release:
		return "DHCPRELEASE"
	case Inform:
		return "DHCPINFORM"
	}
	return fmt.Sprintf("DHCP(%d)", byte(t))
}

// Option codes used here (RFC 2132).
const (
	OptPad           byte = 0
	OptSubnetMask    byte = 1
	OptRouter        byte = 3
	OptDNS           byte = 6
	OptHostname      byte = 12
	OptRequestedAddr byte = 50
	OptLeaseTime     byte = 51
	OptOverload      byte = 52
	OptMessageType   byte = 53
	OptServerID      byte = 54
	OptParamRequest  byte = 55
	OptMessage       byte = 56
	OptClientID      byte = 61
	OptClientFQDN    byte = 81  // RFC 4702
	OptDomainSearch  byte = 119 // RFC 3397
	OptEnd           byte = 255
)

// Sizes of the fixed part (RFC 2131 §2).
const (
	fixedLen  = 236           // op .. file
	headerLen = fixedLen + 4  // plus the magic cookie
	minLen    = 300           // BOOTP's minimum message size (RFC 1542 §2.1)
	snameOff  = 44            // offset of sname
	fileOff   = snameOff + 64 // offset of file
	chaddrOff = 28            // offset of chaddr
	magic     = 0x63825363    // RFC 2131 §3
	maxOptLen = 255           // one option's data; longer values are split (RFC 3396)
)

// Message is one BOOTP/DHCP message. Addresses are IPv4; the zero
// netip.Addr stands for 0.0.0.0.
type Message struct {
	Op     byte
	HType  byte // hardware address type; 1 = Ethernet
	HLen   byte // hardware address length; 6 for Ethernet
	Hops   byte
	XID    uint32
	Secs   uint16
	Flags  uint16
	CIAddr netip.Addr // client's address, when it has one
	YIAddr netip.Addr // "your" address: the one offered or acked
	SIAddr netip.Addr // next server
	GIAddr netip.Addr // relay agent
	CHAddr [16]byte   // client hardware address, HLen bytes used
	SName  [64]byte   // server host name (raw; may carry options, see OptOverload)
	File   [128]byte  // boot file name (raw; may carry options)

	// Options by code. A code that appears several times in a message is
	// one option whose values are concatenated (RFC 3396), including
	// parts in file and sname when OptOverload says so. Pad, end and
	// overload themselves are not kept.
	Options Options
}

// Options maps option codes to values.
type Options map[byte][]byte

// Errors returned by Parse.
var (
	ErrShort     = errors.New("dhcp: message shorter than 240 bytes")
	ErrNoCookie  = errors.New("dhcp: no DHCP magic cookie (plain BOOTP)")
	ErrTruncated = errors.New("dhcp: option runs past the end of its field")
)

// Parse decodes a DHCP message (the UDP payload). It does not validate
// semantics (Server.Handle does); it fails only when the bytes are not a
// DHCP message. The returned Message does not alias b.
func Parse(b []byte) (*Message, error) {
	if len(b) < headerLen {
		return nil, ErrShort
	}
	if binary.BigEndian.Uint32(b[fixedLen:]) != magic {
		return nil, ErrNoCookie
	}
	m := &Message{
		Op:     b[0],
		HType:  b[1],
		HLen:   b[2],
		Hops:   b[3],
		XID:    binary.BigEndian.Uint32(b[4:]),
		Secs:   binary.BigEndian.Uint16(b[8:]),
		Flags:  binary.BigEndian.Uint16(b[10:]),
		CIAddr: addr4(b[12:16]),
		YIAddr: addr4(b[16:20]),
		SIAddr: addr4(b[20:24]),
		GIAddr: addr4(b[24:28]),
	}
	copy(m.CHAddr[:], b[chaddrOff:])
	copy(m.SName[:], b[snameOff:])
	copy(m.File[:], b[fileOff:])

	opts := Options{}
	overload, err := parseOptions(opts, b[headerLen:], true)
	if err != nil {
		return nil, err
	}
	// RFC 2131 §4.1: with option overload, "file" is read next, then
	// "sname"; neither may contain a further overload option.
	if overload&1 != 0 {
		if _, err := parseOptions(opts, m.File[:], false); err != nil {
			return nil, err
		}
	}
	if overload&2 != 0 {
		if _, err := parseOptions(opts, m.SName[:], false); err != nil {
			return nil, err
		}
	}
	m.Options = opts
	return m, nil
}

// parseOptions appends the options in b to opts and returns the value of
// an overload option (when allowed; otherwise it is an ordinary option and
// ignored). A field ends at the end option or at its end.
func parseOptions(opts Options, b []byte, allowOverload bool) (overload byte, err error) {
	for len(b) > 0 {
		code := b[0]
		switch code {
		case OptPad:
			b = b[1:]
			continue
		case OptEnd:
			return overload, nil
		}
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return 0, ErrTruncated
		}
		val := b[2 : 2+int(b[1])]
		b = b[2+int(b[1]):]
		if code == OptOverload {
			if allowOverload && len(val) == 1 {
				overload = val[0]
			}
			continue
		}
		opts[code] = append(opts[code], val...)
	}
	return overload, nil
}

func addr4(b []byte) netip.Addr {
	a := netip.AddrFrom4([4]byte(b))
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

func put4(b []byte, a netip.Addr) {
	if a.IsValid() && a.Is4() {
		v := a.As4()
		copy(b, v[:])
	}
}

// Marshal encodes m. Options are written in ascending code order, the
// message type first (some clients expect it there), values longer than
// 255 bytes split into several options (RFC 3396); the message is padded
// to BOOTP's 300-byte minimum. Options always go into the options field:
// Marshal never overloads file or sname.
func (m *Message) Marshal() []byte {
	b := make([]byte, headerLen, 576)
	b[0], b[1], b[2], b[3] = m.Op, m.HType, m.HLen, m.Hops
	binary.BigEndian.PutUint32(b[4:], m.XID)
	binary.BigEndian.PutUint16(b[8:], m.Secs)
	binary.BigEndian.PutUint16(b[10:], m.Flags)
	put4(b[12:], m.CIAddr)
	put4(b[16:], m.YIAddr)
	put4(b[20:], m.SIAddr)
	put4(b[24:], m.GIAddr)
	copy(b[chaddrOff:], m.CHAddr[:])
	copy(b[snameOff:], m.SName[:])
	copy(b[fileOff:], m.File[:])
	binary.BigEndian.PutUint32(b[fixedLen:], magic)

	codes := make([]byte, 0, len(m.Options))
	for c := range m.Options {
		switch c {
		case OptPad, OptEnd, OptOverload:
			continue // not options one can set
		}
		codes = append(codes, c)
	}
	slices.SortFunc(codes, func(a, c byte) int {
		switch {
		case a == c:
			return 0
		case a == OptMessageType:
			return -1
		case c == OptMessageType:
			return 1
		}
		return int(a) - int(c)
	})
	for _, c := range codes {
		v := m.Options[c]
		for {
			n := min(len(v), maxOptLen)
			b = append(b, c, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
			if len(v) == 0 {
				break
			}
		}
	}
	b = append(b, OptEnd)
	for len(b) < minLen {
		b = append(b, OptPad)
	}
	return b
}

// Type returns the DHCP message type (option 53), or 0 for none.
func (m *Message) Type() MessageType {
	if v := m.Options[OptMessageType]; len(v) == 1 {
		return MessageType(v[0])
	}
	return 0
}

// HardwareAddr returns the client hardware address (HLen bytes of CHAddr,
// at most 16).
func (m *Message) HardwareAddr() net.HardwareAddr {
	return net.HardwareAddr(slices.Clone(m.CHAddr[:min(int(m.HLen), len(m.CHAddr))]))
}

// ClientID identifies the client for the lease table: the client
// identifier option if present (RFC 2131 §4.2), otherwise the hardware
// type and address.
func (m *Message) ClientID() string {
	if id := m.Options[OptClientID]; len(id) > 0 {
		return "id:" + string(id)
	}
	return "hw:" + string([]byte{m.HType}) + string(m.HardwareAddr())
}

// Addr returns the IPv4 address carried by option code (4 bytes), or the
// zero Addr.
func (m *Message) Addr(code byte) netip.Addr {
	if v := m.Options[code]; len(v) == 4 {
		return addr4(v)
	}
	return netip.Addr{}
}

// SetAddrs sets option code to a list of IPv4 addresses.
func (o Options) SetAddrs(code byte, addrs ...netip.Addr) {
	v := make([]byte, 0, 4*len(addrs))
	for _, a := range addrs {
		a4 := a.As4()
		v = append(v, a4[:]...)
	}
	o[code] = v
}

// SetUint32 sets option code to a 32-bit big-endian value.
func (o Options) SetUint32(code byte, n uint32) {
	o[code] = binary.BigEndian.AppendUint32(nil, n)
}
