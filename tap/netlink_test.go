package tap

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/usernet/usernet/netplan"
	"golang.org/x/sys/unix"
)

// Every message is one well-formed rtnetlink request: its header's length
// is its own, its attributes tile it, and the tap's index goes inside it.
// The kernel's reading of them is nsjoin's TestOpenTap*.
func TestConfigMessagesAreWellFormed(t *testing.T) {
	cfg := Config{
		MTU:      1500,
		MAC:      []byte{2, 0, 0, 0, 0, 1},
		Addrs:    []netip.Prefix{netip.MustParsePrefix("10.0.2.100/24"), netip.MustParsePrefix("fd00::100/64")},
		Gateway:  netip.MustParseAddr("10.0.2.2"),
		Gateway6: netip.MustParseAddr("fe80::2"),
	}
	withRoutes := cfg
	withRoutes.Routes = []netplan.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.0.2.2")},
		{Dst: netip.MustParsePrefix("10.0.2.0/24"), Metric: 100},
	}
	for _, c := range []Config{cfg, withRoutes} {
		msgs := ConfigMessages("tap0", c)
		var whats []string
		for _, m := range msgs {
			whats = append(whats, m.What)
			b := m.Bytes
			if len(b) < unix.SizeofNlMsghdr || int(binary.NativeEndian.Uint32(b)) != len(b) || len(b)%4 != 0 {
				t.Fatalf("%s: header length %d, message %d bytes", m.What, binary.NativeEndian.Uint32(b), len(b))
			}
			if fl := binary.NativeEndian.Uint16(b[6:]); fl&(unix.NLM_F_REQUEST|unix.NLM_F_ACK) != unix.NLM_F_REQUEST|unix.NLM_F_ACK {
				t.Errorf("%s: flags %#x lack REQUEST|ACK", m.What, fl)
			}
			if m.IndexAt != 0 && (m.IndexAt < unix.SizeofNlMsghdr || m.IndexAt+4 > len(b)) {
				t.Errorf("%s: index at %d, outside the message", m.What, m.IndexAt)
			}
			hdr := map[uint16]int{unix.RTM_NEWLINK: unix.SizeofIfInfomsg, unix.RTM_SETLINK: unix.SizeofIfInfomsg,
				unix.RTM_NEWADDR: unix.SizeofIfAddrmsg, unix.RTM_NEWROUTE: unix.SizeofRtMsg}[binary.NativeEndian.Uint16(b[4:])]
			if hdr == 0 {
				t.Fatalf("%s: message type %d", m.What, binary.NativeEndian.Uint16(b[4:]))
			}
			for a := b[unix.SizeofNlMsghdr+hdr:]; len(a) > 0; {
				n := int(binary.NativeEndian.Uint16(a))
				if n < unix.SizeofRtAttr || n > len(a) {
					t.Fatalf("%s: attribute of %d bytes in %d", m.What, n, len(a))
				}
				a = a[min((n+3)&^3, len(a)):]
			}
		}
		t.Logf("%q", whats)
		if whats[0] != "bring lo up" || len(msgs) < 6 {
			t.Errorf("messages %q", whats)
		}
	}
}
