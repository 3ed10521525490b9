// Package dhcp6 is the DHCPv6 server of usernet's virtual network in
// pasta's mode: the message format (RFC 8415 §8 and §21, FQDN per RFC
// 4704, DNS per RFC 3646) and the server side of the exchanges a client
// makes to get the one address the network has for it (the plan's Guest6,
// the host's address that pasta copies), as pasta does.
//
// It is standard library only and does no I/O: package stack takes the
// requests off the link, calls Server.Handle, and writes the reply from
// the stack's link-local address to the client's.
package dhcp6

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// The ports (RFC 8415 §7.2) and the multicast address clients send to
// (All_DHCP_Relay_Agents_and_Servers, §7.1).
const (
	ClientPort = 546
	ServerPort = 547
)

// AllServers is All_DHCP_Relay_Agents_and_Servers, where clients send
// every message.
var AllServers = netip.MustParseAddr("ff02::1:2")

// MessageType is a message's msg-type (RFC 8415 §7.3).
type MessageType uint8

const (
	Solicit            MessageType = 1
	Advertise          MessageType = 2
	Request            MessageType = 3
	Confirm            MessageType = 4
	Renew              MessageType = 5
	Rebind             MessageType = 6
	Reply              MessageType = 7
	Release            MessageType = 8
	Decline            MessageType = 9
	Reconfigure        MessageType = 10
	InformationRequest MessageType = 11
	RelayForw          MessageType = 12
	RelayRepl          MessageType = 13
)

var typeNames = map[MessageType]string{
	Solicit: "SOLICIT", Advertise: "ADVERTISE", Request: "REQUEST", Confirm: "CONFIRM",
	Renew: "RENEW", Rebind: "REBIND", Reply: "REPLY", Release: "RELEASE", Decline: "DECLINE",
	Reconfigure: "RECONFIGURE", InformationRequest: "INFORMATION-REQUEST",
	RelayForw: "RELAY-FORW", RelayRepl: "RELAY-REPL",
}

func (t MessageType) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// Option codes (RFC 8415 §21, RFC 3646, RFC 4704).
const (
	OptClientID    uint16 = 1
	OptServerID    uint16 = 2
	OptIANA        uint16 = 3
	OptIATA        uint16 = 4
	OptIAAddr      uint16 = 5
	OptORO         uint16 = 6
	OptPreference  uint16 = 7
	OptElapsedTime uint16 = 8
	OptStatusCode  uint16 = 13
	OptRapidCommit uint16 = 14
	OptDNSServers  uint16 = 23
	OptDomainList  uint16 = 24
	OptIAPD        uint16 = 25
	OptFQDN        uint16 = 39
)

// StatusCode is the status of a Status Code option (RFC 8415 §21.13).
type StatusCode uint16

const (
	StatusSuccess       StatusCode = 0
	StatusUnspecFail    StatusCode = 1
	StatusNoAddrsAvail  StatusCode = 2
	StatusNoBinding     StatusCode = 3
	StatusNotOnLink     StatusCode = 4
	StatusUseMulticast  StatusCode = 5
	StatusNoPrefixAvail StatusCode = 6
)

// Option is one option, its data undecoded.
type Option struct {
	Code uint16
	Data []byte
}

// Options are a message's or an option's options, in wire order (codes may
// repeat: one IA_NA per IA).
type Options []Option

// Message is a client/server message (RFC 8415 §8). Relay messages (§9)
// are not parsed: usernet's link has no relay.
type Message struct {
	Type    MessageType
	TxID    [3]byte
	Options Options
}

const headerLen = 4 // msg-type, transaction-id

// maxOptionLen is what an option's 16-bit length can say.
const maxOptionLen = 0xffff

// Parse decodes a client/server message. It checks every length against
// the buffer and never keeps a reference to b.
func Parse(b []byte) (*Message, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("dhcp6: message of %d bytes, shorter than its header", len(b))
	}
	t := MessageType(b[0])
	if t == RelayForw || t == RelayRepl {
		return nil, fmt.Errorf("dhcp6: %v: relay messages are not handled", t)
	}
	opts, err := ParseOptions(b[headerLen:])
	if err != nil {
		return nil, err
	}
	m := &Message{Type: t, Options: opts}
	copy(m.TxID[:], b[1:4])
	return m, nil
}

// ParseOptions decodes a run of options (a message's, or an IA's
// encapsulated ones). The data is copied.
func ParseOptions(b []byte) (Options, error) {
	var opts Options
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, errors.New("dhcp6: truncated option header")
		}
		code, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return nil, fmt.Errorf("dhcp6: option %d of %d bytes overruns the message (%d left)", code, n, len(b)-4)
		}
		opts = append(opts, Option{Code: code, Data: append([]byte{}, b[4:4+n]...)})
		b = b[4+n:]
	}
	return opts, nil
}

// Marshal encodes the message.
func (m *Message) Marshal() []byte {
	b := []byte{byte(m.Type), m.TxID[0], m.TxID[1], m.TxID[2]}
	return m.Options.Append(b)
}

// Append appends the options' wire form to b. Data longer than an option
// can carry is cut (no option the server builds comes near it).
func (o Options) Append(b []byte) []byte {
	for _, opt := range o {
		d := opt.Data
		if len(d) > maxOptionLen {
			d = d[:maxOptionLen]
		}
		b = binary.BigEndian.AppendUint16(b, opt.Code)
		b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
		b = append(b, d...)
	}
	return b
}

// Get returns the data of the first option with code, and whether there
// is one.
func (o Options) Get(code uint16) ([]byte, bool) {
	for _, opt := range o {
		if opt.Code == code {
			return opt.Data, true
		}
	}
	return nil, false
}

// Has reports whether there is an option with code.
func (o Options) Has(code uint16) bool {
	_, ok := o.Get(code)
	return ok
}

// All returns the data of every option with code, in order.
func (o Options) All(code uint16) [][]byte {
	var all [][]byte
	for _, opt := range o {
		if opt.Code == code {
			all = append(all, opt.Data)
		}
	}
	return all
}

// IA is an Identity Association for Non-temporary Addresses (IA_NA, RFC
// 8415 §21.4): the client's IAID, the renewal times and the IA's options
// (IA Address options, a Status Code).
type IA struct {
	IAID    [4]byte
	T1, T2  uint32
	Options Options
}

const iaHeaderLen = 12

// ParseIA decodes an IA_NA option's data.
func ParseIA(b []byte) (IA, error) {
	if len(b) < iaHeaderLen {
		return IA{}, fmt.Errorf("dhcp6: IA_NA of %d bytes, shorter than its %d fixed ones", len(b), iaHeaderLen)
	}
	opts, err := ParseOptions(b[iaHeaderLen:])
	if err != nil {
		return IA{}, fmt.Errorf("dhcp6: in IA_NA: %w", err)
	}
	ia := IA{T1: binary.BigEndian.Uint32(b[4:]), T2: binary.BigEndian.Uint32(b[8:]), Options: opts}
	copy(ia.IAID[:], b)
	return ia, nil
}

// Marshal encodes the IA as IA_NA option data.
func (ia IA) Marshal() []byte {
	b := append([]byte{}, ia.IAID[:]...)
	b = binary.BigEndian.AppendUint32(b, ia.T1)
	b = binary.BigEndian.AppendUint32(b, ia.T2)
	return ia.Options.Append(b)
}

// IAAddr is an IA Address option (RFC 8415 §21.6).
type IAAddr struct {
	Addr             netip.Addr
	Preferred, Valid uint32
	Options          Options
}

const iaAddrLen = 24

// ParseIAAddr decodes an IA Address option's data.
func ParseIAAddr(b []byte) (IAAddr, error) {
	if len(b) < iaAddrLen {
		return IAAddr{}, fmt.Errorf("dhcp6: IA Address of %d bytes, shorter than its %d fixed ones", len(b), iaAddrLen)
	}
	opts, err := ParseOptions(b[iaAddrLen:])
	if err != nil {
		return IAAddr{}, fmt.Errorf("dhcp6: in IA Address: %w", err)
	}
	return IAAddr{
		Addr:      netip.AddrFrom16([16]byte(b[:16])),
		Preferred: binary.BigEndian.Uint32(b[16:]),
		Valid:     binary.BigEndian.Uint32(b[20:]),
		Options:   opts,
	}, nil
}

// Marshal encodes the IA Address option's data.
func (a IAAddr) Marshal() []byte {
	b := a.Addr.AsSlice()
	b = binary.BigEndian.AppendUint32(b, a.Preferred)
	b = binary.BigEndian.AppendUint32(b, a.Valid)
	return a.Options.Append(b)
}

// Status returns a Status Code option with an empty message.
func Status(code StatusCode) Option {
	return Option{Code: OptStatusCode, Data: binary.BigEndian.AppendUint16(nil, uint16(code))}
}

// StatusOf returns the status code in o, and whether o has one. A
// truncated one counts as UnspecFail.
func StatusOf(o Options) (StatusCode, bool) {
	d, ok := o.Get(OptStatusCode)
	if !ok {
		return 0, false
	}
	if len(d) < 2 {
		return StatusUnspecFail, true
	}
	return StatusCode(binary.BigEndian.Uint16(d)), true
}

// DUIDLL returns a DUID-LL (RFC 8415 §11.4) for an Ethernet address.
func DUIDLL(mac []byte) []byte {
	b := []byte{0, 3, 0, 1} // DUID-LL, hardware type 1 (Ethernet)
	return append(b, mac...)
}

// EncodeDomains encodes names in DNS wire format without compression (RFC
// 8415 §10), as options 24 and 39 carry them. A trailing dot is optional.
// It fails for a name with an empty label, a label over 63 bytes or a name
// over 255 bytes.
func EncodeDomains(names ...string) ([]byte, error) {
	var b []byte
	for _, name := range names {
		start := len(b)
		if n := strings.TrimSuffix(name, "."); n != "" {
			for _, label := range strings.Split(n, ".") {
				if len(label) == 0 || len(label) > 63 {
					return nil, fmt.Errorf("dhcp6: domain name %q: a label is empty or longer than 63 bytes", name)
				}
				b = append(b, byte(len(label)))
				b = append(b, label...)
			}
		}
		b = append(b, 0)
		if len(b)-start > 255 {
			return nil, fmt.Errorf("dhcp6: domain name %q is longer than 255 bytes", name)
		}
	}
	return b, nil
}
