package dhcp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

var (
	network = netip.MustParsePrefix("10.0.2.0/24")
	gw      = netip.MustParseAddr("10.0.2.2")
	dns     = netip.MustParseAddr("10.0.2.3")
	macA    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

// clock is a settable Config.Now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func ip(s string) netip.Addr             { return netip.MustParseAddr(s) }
func mustServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer(%+v): %v", cfg, err)
	}
	return s
}

func slirpConfig(c *clock) Config {
	return Config{
		Network:   network,
		ServerID:  gw,
		DNS:       []netip.Addr{dns},
		PoolStart: ip("10.0.2.15"),
		PoolSize:  16,
		Now:       c.now,
	}
}

// request builds a client message of type t from hw.
func request(t MessageType, hw net.HardwareAddr, opts Options) *Message {
	m := &Message{Op: OpRequest, HType: 1, HLen: byte(len(hw)), XID: 0x1234, Options: Options{OptMessageType: {byte(t)}}}
	copy(m.CHAddr[:], hw)
	for c, v := range opts {
		m.Options[c] = v
	}
	return m
}

func addrOpt(a netip.Addr) []byte { b := a.As4(); return b[:] }

// handle runs req through the wire format both ways, as the stack does.
func handle(t *testing.T, s *Server, req *Message) *Reply {
	t.Helper()
	parsed, err := Parse(req.Marshal())
	if err != nil {
		t.Fatalf("Parse(Marshal(%+v)): %v", req, err)
	}
	r := s.Handle(parsed)
	if r != nil {
		if _, err := Parse(r.Msg.Marshal()); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	}
	return r
}

// discoverRequest runs DISCOVER, then REQUEST for the offered address, and
// returns the acked address.
func discoverRequest(t *testing.T, s *Server, hw net.HardwareAddr, opts Options) netip.Addr {
	t.Helper()
	off := handle(t, s, request(Discover, hw, opts))
	if off == nil || off.Msg.Type() != Offer {
		t.Fatalf("DISCOVER from %v: reply %+v, want an OFFER", hw, off)
	}
	ro := Options{OptRequestedAddr: addrOpt(off.Msg.YIAddr), OptServerID: addrOpt(gw)}
	for c, v := range opts {
		ro[c] = v
	}
	ack := handle(t, s, request(Request, hw, ro))
	if ack == nil || ack.Msg.Type() != Ack || ack.Msg.YIAddr != off.Msg.YIAddr {
		t.Fatalf("REQUEST %v from %v: reply %+v, want ACK of it", off.Msg.YIAddr, hw, ack)
	}
	return ack.Msg.YIAddr
}

func TestOfferCarriesSlirpOptionsAndIsUnicastToCHAddr(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	r := handle(t, s, request(Discover, macA, nil))
	if r == nil {
		t.Fatal("DISCOVER: no reply")
	}
	m := r.Msg
	if m.Type() != Offer || m.Op != OpReply || m.XID != 0x1234 || m.YIAddr != ip("10.0.2.15") {
		t.Errorf("OFFER = type %v op %d xid %#x yiaddr %v; want DHCPOFFER 2 0x1234 10.0.2.15", m.Type(), m.Op, m.XID, m.YIAddr)
	}
	want := map[byte][]byte{
		OptSubnetMask: {255, 255, 255, 0},
		OptRouter:     {10, 0, 2, 2},
		OptDNS:        {10, 0, 2, 3},
		OptServerID:   {10, 0, 2, 2},
		OptLeaseTime:  binary.BigEndian.AppendUint32(nil, 86400),
	}
	for c, w := range want {
		if got := m.Options[c]; !bytes.Equal(got, w) {
			t.Errorf("OFFER option %d = %v, want %v", c, got, w)
		}
	}
	if r.Broadcast || r.IP != ip("10.0.2.15") || r.HW.String() != macA.String() {
		t.Errorf("OFFER delivery = broadcast %v to %v at %v; want unicast to 10.0.2.15 at %v", r.Broadcast, r.IP, r.HW, macA)
	}
}

func TestDNSOmittedWhenNotServed(t *testing.T) {
	cfg := slirpConfig(&clock{})
	cfg.DNS = nil
	r := handle(t, mustServer(t, cfg), request(Discover, macA, nil))
	if _, ok := r.Msg.Options[OptDNS]; ok {
		t.Errorf("OFFER has option 6 (%v) without DNS servers", r.Msg.Options[OptDNS])
	}
}

func TestLeasesDistinctPerClientAndStable(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	if got := discoverRequest(t, s, macA, nil); got != ip("10.0.2.15") {
		t.Errorf("client A got %v, want 10.0.2.15", got)
	}
	if got := discoverRequest(t, s, macB, nil); got != ip("10.0.2.16") {
		t.Errorf("client B got %v, want 10.0.2.16", got)
	}
	c.advance(time.Hour)
	if got := discoverRequest(t, s, macA, nil); got != ip("10.0.2.15") {
		t.Errorf("client A again got %v, want 10.0.2.15", got)
	}
	// Same MAC, different client identifier: another client.
	if got := discoverRequest(t, s, macA, Options{OptClientID: []byte("\x01other")}); got != ip("10.0.2.17") {
		t.Errorf("client id 'other' got %v, want 10.0.2.17", got)
	}
}

func TestRequestWrongAddressIsNakedByBroadcast(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	discoverRequest(t, s, macA, nil) // .15
	for _, want := range []string{"10.0.2.15" /* A's */, "10.0.2.100" /* not in the pool */, "192.168.1.5"} {
		r := handle(t, s, request(Request, macB, Options{OptRequestedAddr: addrOpt(ip(want))}))
		if r == nil || r.Msg.Type() != Nak || !r.Broadcast || r.Msg.YIAddr.IsValid() {
			t.Errorf("B INIT-REBOOT REQUEST for %v: reply %+v, want a broadcast NAK", want, r)
		}
	}
}

func TestRequestForOtherServerIsIgnored(t *testing.T) {
	s := mustServer(t, slirpConfig(&clock{}))
	handle(t, s, request(Discover, macA, nil))
	r := handle(t, s, request(Request, macA, Options{OptRequestedAddr: addrOpt(ip("10.0.2.15")), OptServerID: addrOpt(ip("10.0.2.9"))}))
	if r != nil {
		t.Errorf("REQUEST naming server 10.0.2.9: reply %+v, want none", r.Msg)
	}
}

func TestDelivery(t *testing.T) {
	s := mustServer(t, slirpConfig(&clock{}))
	discoverRequest(t, s, macA, nil)

	bc := request(Discover, macB, nil)
	bc.Flags = FlagBroadcast
	if r := handle(t, s, bc); !r.Broadcast || r.Msg.Flags != FlagBroadcast {
		t.Errorf("DISCOVER with BROADCAST flag: broadcast %v flags %#x, want broadcast and the flag echoed", r.Broadcast, r.Msg.Flags)
	}

	renew := request(Request, macA, nil)
	renew.CIAddr = ip("10.0.2.15")
	r := handle(t, s, renew)
	if r == nil || r.Msg.Type() != Ack || r.Broadcast || r.IP != ip("10.0.2.15") || r.Msg.CIAddr != ip("10.0.2.15") {
		t.Errorf("renewing REQUEST: %+v, want ACK unicast to ciaddr 10.0.2.15", r)
	}

	inform := request(Inform, macA, nil)
	inform.CIAddr = ip("10.0.2.100")
	r = handle(t, s, inform)
	if r == nil || r.Msg.Type() != Ack || r.Msg.YIAddr.IsValid() || r.IP != ip("10.0.2.100") {
		t.Fatalf("INFORM: %+v, want ACK without yiaddr to 10.0.2.100", r)
	}
	if _, ok := r.Msg.Options[OptLeaseTime]; ok {
		t.Errorf("INFORM ACK has a lease time (RFC 2131 §3.4 forbids it)")
	}
	if !bytes.Equal(r.Msg.Options[OptRouter], []byte{10, 0, 2, 2}) {
		t.Errorf("INFORM ACK router = %v, want 10.0.2.2", r.Msg.Options[OptRouter])
	}
}

func TestReleasedAddressComesBackToItsClient(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	discoverRequest(t, s, macA, nil)
	rel := request(Release, macA, Options{OptServerID: addrOpt(gw)})
	rel.CIAddr = ip("10.0.2.15")
	if r := handle(t, s, rel); r != nil {
		t.Errorf("RELEASE got a reply %+v", r.Msg)
	}
	if got := discoverRequest(t, s, macB, nil); got != ip("10.0.2.16") {
		t.Errorf("after A released .15, B got %v; want .16 (never-used addresses first)", got)
	}
	if got := discoverRequest(t, s, macA, nil); got != ip("10.0.2.15") {
		t.Errorf("A again got %v, want its .15", got)
	}
}

func TestPoolExhaustionAndExpiry(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	for i := range 16 {
		hw := net.HardwareAddr{0x02, 0, 0, 0, 1, byte(i)}
		if got, want := discoverRequest(t, s, hw, nil), ip("10.0.2.15"); got.Compare(want) < 0 || got.Compare(ip("10.0.2.30")) > 0 {
			t.Fatalf("client %d got %v, want in 10.0.2.15-30", i, got)
		}
	}
	late := net.HardwareAddr{0x02, 0, 0, 0, 2, 0}
	if r := handle(t, s, request(Discover, late, nil)); r != nil {
		t.Fatalf("17th client got %+v, want no reply (pool of 16 exhausted)", r.Msg)
	}
	c.advance(DefaultLeaseTime + time.Second)
	if got := discoverRequest(t, s, late, nil); !got.IsValid() {
		t.Fatalf("17th client after expiry got nothing")
	}
}

func TestDeclinedAddressIsNotOfferedAgain(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	s := mustServer(t, slirpConfig(c))
	discoverRequest(t, s, macA, nil)
	handle(t, s, request(Decline, macA, Options{OptRequestedAddr: addrOpt(ip("10.0.2.15")), OptServerID: addrOpt(gw)}))
	if got := discoverRequest(t, s, macA, nil); got == ip("10.0.2.15") {
		t.Errorf("A was offered the address it declined")
	}
}

func TestNonRequestsIgnored(t *testing.T) {
	s := mustServer(t, slirpConfig(&clock{}))
	reply := request(Discover, macA, nil)
	reply.Op = OpReply
	relayed := request(Discover, macA, nil)
	relayed.GIAddr = ip("10.0.2.50")
	for name, m := range map[string]*Message{"reply op": reply, "relayed": relayed, "no type": request(0, macA, nil)} {
		if m.Type() == 0 {
			delete(m.Options, OptMessageType)
		}
		if r := handle(t, s, m); r != nil {
			t.Errorf("%s: got reply %+v, want none", name, r.Msg)
		}
	}
}

func TestSlash25PoolStart(t *testing.T) {
	cfg := Config{
		Network:   netip.MustParsePrefix("10.0.135.128/25"),
		ServerID:  ip("10.0.135.130"),
		PoolStart: ip("10.0.135.143"),
		PoolSize:  16,
	}
	r := handle(t, mustServer(t, cfg), request(Discover, macA, nil))
	if r.Msg.YIAddr != ip("10.0.135.143") || !bytes.Equal(r.Msg.Options[OptSubnetMask], []byte{255, 255, 255, 128}) {
		t.Errorf("OFFER = %v mask %v, want 10.0.135.143 mask 255.255.255.128", r.Msg.YIAddr, r.Msg.Options[OptSubnetMask])
	}
}

func TestNewServerValidates(t *testing.T) {
	good := slirpConfig(&clock{})
	for name, mod := range map[string]func(*Config){
		"v6 network":     func(c *Config) { c.Network = netip.MustParsePrefix("fd00::/64") },
		"server outside": func(c *Config) { c.ServerID = ip("10.0.3.2") },
		"pool past end":  func(c *Config) { c.PoolStart = ip("10.0.2.250") },
		"empty pool":     func(c *Config) { c.PoolSize = 0 },
		"v6 DNS":         func(c *Config) { c.DNS = []netip.Addr{ip("fd00::3")} },
		"huge lease":     func(c *Config) { c.LeaseTime = 1 << 62 },
		"pool wraps": func(c *Config) {
			c.Network = netip.MustParsePrefix("255.255.255.0/24")
			c.ServerID = ip("255.255.255.2")
			c.PoolStart = ip("255.255.255.250")
		},
		"no server":        func(c *Config) { c.ServerID = netip.Addr{} },
		"invalid network":  func(c *Config) { c.Network = netip.Prefix{} },
		"pool start unset": func(c *Config) { c.PoolStart = netip.Addr{} },
	} {
		cfg := good
		mod(&cfg)
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%s) = nil error, want one", name)
		}
	}
	if _, err := NewServer(good); err != nil {
		t.Errorf("NewServer(slirp defaults) = %v", err)
	}
}

func TestParseOptionsOverloadAndConcatenation(t *testing.T) {
	m := request(Discover, macA, nil)
	b := m.Marshal()
	// Rewrite the options: a split client identifier (RFC 3396), the
	// overload option sending us to "file", where the requested
	// address sits.
	b = b[:headerLen]
	b = append(b, OptMessageType, 1, byte(Discover), OptClientID, 2, 'a', 'b', OptOverload, 1, 1, OptClientID, 1, 'c', OptEnd)
	copy(b[fileOff:], []byte{OptRequestedAddr, 4, 10, 0, 2, 20, OptEnd})
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if id := string(got.Options[OptClientID]); id != "abc" {
		t.Errorf("client id = %q, want the concatenation %q", id, "abc")
	}
	if a := got.Addr(OptRequestedAddr); a != ip("10.0.2.20") {
		t.Errorf("requested address from overloaded file = %v, want 10.0.2.20", a)
	}
	if _, ok := got.Options[OptOverload]; ok {
		t.Errorf("overload option kept in Options")
	}
}

func TestParseRejects(t *testing.T) {
	ok := request(Discover, macA, nil).Marshal()
	noCookie := bytes.Clone(ok)
	noCookie[fixedLen] = 0
	truncated := append(bytes.Clone(ok[:headerLen]), OptClientID, 10, 1, 2)
	for name, b := range map[string][]byte{"empty": nil, "short": ok[:239], "no cookie": noCookie, "truncated option": truncated} {
		if m, err := Parse(b); err == nil {
			t.Errorf("Parse(%s) = %+v, want an error", name, m)
		}
	}
}

func TestMarshalSplitsLongOptionsAndPads(t *testing.T) {
	m := request(Inform, macA, Options{OptClientID: bytes.Repeat([]byte{'x'}, 600)})
	b := m.Marshal()
	if len(b) < minLen {
		t.Errorf("len(Marshal) = %d, want at least %d", len(b), minLen)
	}
	if b[headerLen] != OptMessageType {
		t.Errorf("first option = %d, want the message type", b[headerLen])
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal): %v", err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
	}
}

// FuzzParse checks that Parse never panics, that what it accepts survives
// a round trip through Marshal, and that the server copes with it.
func FuzzParse(f *testing.F) {
	f.Add(request(Discover, macA, nil).Marshal())
	f.Add(request(Request, macB, Options{OptRequestedAddr: {10, 0, 2, 15}, OptServerID: {10, 0, 2, 2}, OptClientID: {1, 2, 3}}).Marshal())
	s, err := NewServer(slirpConfig(&clock{t: time.Unix(1e9, 0)}))
	if err != nil {
		f.Fatalf("NewServer: %v", err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse(m.Marshal())
		if err != nil {
			t.Fatalf("Parse(Marshal(Parse(b))): %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", again, m)
		}
		if r := s.Handle(m); r != nil {
			if _, err := Parse(r.Msg.Marshal()); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if !r.Broadcast && (!r.IP.Is4() || len(r.HW) != 6) {
				t.Fatalf("unicast reply without a destination: %+v", r)
			}
		}
	})
}

func TestExtraOptionsInOffersAndAcks(t *testing.T) {
	cfg := slirpConfig(&clock{t: time.Unix(1e9, 0)})
	cfg.Extra = Options{OptHostname: []byte("myhost"), OptDomainSearch: []byte("\x07example\x03org\x00"), OptRouter: {1, 2, 3, 4}}
	s := mustServer(t, cfg)
	off := handle(t, s, request(Discover, macA, nil))
	ack := handle(t, s, request(Request, macA, Options{OptRequestedAddr: addrOpt(off.Msg.YIAddr), OptServerID: addrOpt(gw)}))
	for _, r := range []*Reply{off, ack} {
		if string(r.Msg.Options[OptHostname]) != "myhost" || string(r.Msg.Options[OptDomainSearch]) != "\x07example\x03org\x00" {
			t.Errorf("%v: options 12 %q, 119 %q; want the extra ones", r.Msg.Type(), r.Msg.Options[OptHostname], r.Msg.Options[OptDomainSearch])
		}
		if !bytes.Equal(r.Msg.Options[OptRouter], []byte{10, 0, 2, 2}) {
			t.Errorf("%v: router %v; an extra option must not replace the server's own", r.Msg.Type(), r.Msg.Options[OptRouter])
		}
	}
	nak := handle(t, s, request(Request, macB, Options{OptRequestedAddr: addrOpt(ip("10.0.2.15"))}))
	if nak == nil || nak.Msg.Type() != Nak || nak.Msg.Options[OptHostname] != nil {
		t.Errorf("NAK %+v: want one without the extra options", nak)
	}
}
