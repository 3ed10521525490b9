package dhcp6

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var (
	serverMAC = []byte{0x52, 0x55, 0xc6, 0x33, 0x64, 0xfe}
	guest6    = netip.MustParseAddr("2001:db8::1")
	onLink    = netip.MustParsePrefix("2001:db8::/64")
)

// solicitHex is the Solicit busybox udhcpc6 1.37 sent to pasta 2025
// (udhcpc6 -O dns -O search): Elapsed Time, IA_NA with IAID 6f633f0a,
// ORO 23 24, an empty client FQDN, Client ID DUID-LL.
const solicitHex = "0122f21e" +
	"00080002" + "0000" +
	"0003000c" + "6f633f0a0000000000000000" +
	"00060004" + "00170018" +
	"00270002" + "0000" +
	"0001000a" + "0003000112e829ff79ab"

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer(%+v): %v", cfg, err)
	}
	return s
}

func fullConfig() Config {
	return Config{
		MAC:    serverMAC,
		Addr:   guest6,
		OnLink: onLink,
		DNS:    []netip.Addr{netip.MustParseAddr("2001:db8::53")},
		Search: []string{"example.org"},
		FQDN:   "myhost.example.org",
	}
}

// handle runs req through the wire format both ways, as the stack does.
func handle(t *testing.T, s *Server, req *Message) *Message {
	t.Helper()
	parsed, err := Parse(req.Marshal())
	if err != nil {
		t.Fatalf("Parse(Marshal(%+v)): %v", req, err)
	}
	r := s.Handle(parsed)
	if r == nil {
		return nil
	}
	again, err := Parse(r.Marshal())
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return again
}

var clientDUID = []byte{0, 3, 0, 1, 0x12, 0xe8, 0x29, 0xff, 0x79, 0xab}

func clientMsg(typ MessageType, opts ...Option) *Message {
	m := &Message{Type: typ, TxID: [3]byte{1, 2, 3}}
	m.Options = append(m.Options, Option{Code: OptClientID, Data: clientDUID})
	m.Options = append(m.Options, opts...)
	return m
}

func iana(iaid byte, addrs ...netip.Addr) Option {
	ia := IA{IAID: [4]byte{0, 0, 0, iaid}}
	for _, a := range addrs {
		ia.Options = append(ia.Options, Option{Code: OptIAAddr, Data: IAAddr{Addr: a, Preferred: 100, Valid: 200}.Marshal()})
	}
	return Option{Code: OptIANA, Data: ia.Marshal()}
}

func serverIDOpt(s *Server) Option { return Option{Code: OptServerID, Data: s.DUID()} }

// TestAdvertiseGolden: udhcpc6's Solicit, answered byte for byte as pasta
// 2025 answers it (captured), but for the server's DUID: DUID-LL of our MAC
// where pasta has a DUID-LLT of its own.
func TestAdvertiseGolden(t *testing.T) {
	s := mustServer(t, fullConfig())
	req, err := Parse(unhex(t, solicitHex))
	if err != nil {
		t.Fatalf("Parse(udhcpc6's Solicit): %v", err)
	}
	if req.Type != Solicit || req.TxID != [3]byte{0x22, 0xf2, 0x1e} || len(req.Options) != 5 {
		t.Fatalf("udhcpc6's Solicit parsed as %+v", req)
	}
	want := "0222f21e" +
		"0002000a" + "000300015255c63364fe" + // Server ID: DUID-LL
		"0001000a" + "0003000112e829ff79ab" + // Client ID, echoed
		"00030028" + "6f633f0a" + "ffffffff" + "ffffffff" + // IA_NA: IAID, T1, T2
		"00050018" + "20010db8000000000000000000000001" + "ffffffff" + "ffffffff" + // IA Address
		"00170010" + "20010db8000000000000000000000053" + // DNS
		"0018000d" + "076578616d706c65036f726700" + // search list
		"00270015" + "00" + "066d79686f7374076578616d706c65036f726700" // FQDN
	rep := s.Handle(req)
	if rep == nil {
		t.Fatal("no answer to udhcpc6's Solicit")
	}
	if got := hex.EncodeToString(rep.Marshal()); got != want {
		t.Errorf("Advertise =\n%s\nwant\n%s", got, want)
	}

	// The Request udhcpc6 sends next: the same with our Server ID.
	req.Type = Request
	req.Options = append(req.Options, serverIDOpt(s))
	rep = handle(t, s, req)
	if rep == nil || rep.Type != Reply {
		t.Fatalf("Request: %+v, want a Reply", rep)
	}
	if got := hex.EncodeToString(rep.Marshal()); got != "07"+want[2:] {
		t.Errorf("Reply =\n%s\nwant\n%s", got, "07"+want[2:])
	}
}

func TestMinimalConfigSendsNoInfoOptions(t *testing.T) {
	s := mustServer(t, Config{MAC: serverMAC, Addr: guest6, OnLink: onLink})
	rep := handle(t, s, clientMsg(Solicit, iana(1)))
	for _, c := range []uint16{OptDNSServers, OptDomainList, OptFQDN, OptStatusCode} {
		if rep.Options.Has(c) {
			t.Errorf("Advertise has option %d without it configured: %+v", c, rep.Options)
		}
	}
	d, _ := rep.Options.Get(OptIANA)
	if p, v, ok := Lifetimes(d, guest6); !ok || p != Infinity || v != Infinity {
		t.Errorf("IA_NA lifetimes of %v: %d %d %v, want infinite", guest6, p, v, ok)
	}
}

func TestRapidCommit(t *testing.T) {
	s := mustServer(t, fullConfig())
	rep := handle(t, s, clientMsg(Solicit, iana(7), Option{Code: OptRapidCommit}))
	if rep == nil || rep.Type != Reply || !rep.Options.Has(OptRapidCommit) {
		t.Fatalf("Solicit with Rapid Commit: %+v, want a Reply with Rapid Commit", rep)
	}
	d, _ := rep.Options.Get(OptIANA)
	ia, err := ParseIA(d)
	if err != nil || ia.IAID != [4]byte{0, 0, 0, 7} {
		t.Errorf("IA_NA %+v (%v), want IAID 7", ia, err)
	}
}

func TestEveryIAGetsTheAddress(t *testing.T) {
	s := mustServer(t, fullConfig())
	rep := handle(t, s, clientMsg(Solicit, iana(1), iana(2, netip.MustParseAddr("2001:db8::99"))))
	ias := rep.Options.All(OptIANA)
	if len(ias) != 2 {
		t.Fatalf("%d IA_NAs, want 2", len(ias))
	}
	for i, d := range ias {
		ia, _ := ParseIA(d)
		if ia.IAID[3] != byte(i+1) || len(ia.Options.All(OptIAAddr)) != 1 {
			t.Errorf("IA_NA %d: %+v, want IAID %d with one address (a Solicit's hint is not echoed)", i, ia, i+1)
		}
		if _, _, ok := Lifetimes(d, guest6); !ok {
			t.Errorf("IA_NA %d lacks %v", i, guest6)
		}
	}
}

func TestRenewRebindDropForeignAddresses(t *testing.T) {
	s := mustServer(t, fullConfig())
	old := netip.MustParseAddr("2001:db8::99")
	for _, typ := range []MessageType{Renew, Rebind} {
		opts := []Option{iana(1, guest6, old)}
		if typ == Renew {
			opts = append(opts, serverIDOpt(s))
		}
		rep := handle(t, s, clientMsg(typ, opts...))
		if rep == nil || rep.Type != Reply {
			t.Fatalf("%v: %+v, want a Reply", typ, rep)
		}
		d, _ := rep.Options.Get(OptIANA)
		if p, v, ok := Lifetimes(d, old); !ok || p != 0 || v != 0 {
			t.Errorf("%v: foreign address %v: lifetimes %d %d present %v, want 0 0", typ, old, p, v, ok)
		}
		if p, _, ok := Lifetimes(d, guest6); !ok || p != Infinity {
			t.Errorf("%v: %v not renewed", typ, guest6)
		}
	}
}

func TestConfirm(t *testing.T) {
	s := mustServer(t, fullConfig())
	for _, c := range []struct {
		addr string
		want StatusCode
	}{{"2001:db8::1", StatusSuccess}, {"2001:db8::abcd", StatusSuccess}, {"2001:db8:1::1", StatusNotOnLink}} {
		rep := handle(t, s, clientMsg(Confirm, iana(1, netip.MustParseAddr(c.addr))))
		if rep == nil || rep.Type != Reply {
			t.Fatalf("Confirm %s: %+v, want a Reply", c.addr, rep)
		}
		if got, ok := StatusOf(rep.Options); !ok || got != c.want {
			t.Errorf("Confirm %s: status %d %v, want %d", c.addr, got, ok, c.want)
		}
	}
	if rep := handle(t, s, clientMsg(Confirm, iana(1))); rep != nil {
		t.Errorf("Confirm without addresses: %+v, want no reply", rep)
	}
}

func TestReleaseDecline(t *testing.T) {
	s := mustServer(t, fullConfig())
	for _, typ := range []MessageType{Release, Decline} {
		rep := handle(t, s, clientMsg(typ, serverIDOpt(s), iana(1, guest6)))
		if rep == nil || rep.Type != Reply {
			t.Fatalf("%v: %+v, want a Reply", typ, rep)
		}
		if got, ok := StatusOf(rep.Options); !ok || got != StatusSuccess {
			t.Errorf("%v: status %d %v, want Success", typ, got, ok)
		}
		if rep.Options.Has(OptIANA) || rep.Options.Has(OptDNSServers) {
			t.Errorf("%v: reply has an IA or configuration: %+v", typ, rep.Options)
		}
	}
}

func TestInformationRequest(t *testing.T) {
	s := mustServer(t, fullConfig())
	for name, req := range map[string]*Message{
		"with Client ID":    clientMsg(InformationRequest),
		"without Client ID": {Type: InformationRequest},
		"with our Server":   clientMsg(InformationRequest, serverIDOpt(s)),
	} {
		rep := handle(t, s, req)
		if rep == nil || rep.Type != Reply {
			t.Fatalf("Information-request %s: %+v, want a Reply", name, rep)
		}
		if rep.Options.Has(OptIANA) || !rep.Options.Has(OptDNSServers) || !rep.Options.Has(OptDomainList) {
			t.Errorf("Information-request %s: options %+v, want DNS and search, no IA", name, rep.Options)
		}
		if rep.Options.Has(OptClientID) != req.Options.Has(OptClientID) {
			t.Errorf("Information-request %s: Client ID echoed %v", name, rep.Options.Has(OptClientID))
		}
	}
}

func TestUnansweredMessages(t *testing.T) {
	s := mustServer(t, fullConfig())
	other := Option{Code: OptServerID, Data: DUIDLL([]byte{2, 0, 0, 0, 0, 1})}
	for name, m := range map[string]*Message{
		"Solicit without Client ID":    {Type: Solicit, Options: Options{iana(1)}},
		"Solicit with a Server ID":     clientMsg(Solicit, serverIDOpt(s), iana(1)),
		"Request without Server ID":    clientMsg(Request, iana(1)),
		"Request to another server":    clientMsg(Request, other, iana(1)),
		"Renew to another server":      clientMsg(Renew, other, iana(1, guest6)),
		"Release to another server":    clientMsg(Release, other, iana(1, guest6)),
		"Rebind with a Server ID":      clientMsg(Rebind, serverIDOpt(s), iana(1, guest6)),
		"Information-request with IA":  clientMsg(InformationRequest, iana(1)),
		"Information-request to other": clientMsg(InformationRequest, other),
		"Advertise":                    clientMsg(Advertise, serverIDOpt(s)),
		"Reply":                        clientMsg(Reply, serverIDOpt(s)),
		"Reconfigure":                  clientMsg(Reconfigure, serverIDOpt(s)),
		"unknown type":                 clientMsg(200),
	} {
		if rep := handle(t, s, m); rep != nil {
			t.Errorf("%s: answered %+v, want nothing", name, rep)
		}
	}
}

func TestSolicitWithoutIANA(t *testing.T) {
	s := mustServer(t, fullConfig())
	rep := handle(t, s, clientMsg(Solicit, Option{Code: OptIAPD, Data: unhex(t, "000000090000000000000000")}))
	if rep == nil || rep.Type != Advertise {
		t.Fatalf("Solicit with only IA_PD: %+v, want an Advertise", rep)
	}
	if st, _ := StatusOf(rep.Options); st != StatusNoAddrsAvail {
		t.Errorf("status %d, want NoAddrsAvail", st)
	}
	d, ok := rep.Options.Get(OptIAPD)
	if !ok || len(d) < 12 || d[3] != 9 {
		t.Fatalf("IA_PD %x, want IAID 9 echoed", d)
	}
	inner, err := ParseOptions(d[12:])
	if st, _ := StatusOf(inner); err != nil || st != StatusNoPrefixAvail {
		t.Errorf("IA_PD status %d (%v), want NoPrefixAvail", st, err)
	}
}

func TestParseRejects(t *testing.T) {
	ok := unhex(t, solicitHex)
	for name, b := range map[string][]byte{
		"empty":             nil,
		"short header":      ok[:3],
		"truncated header":  ok[:6],
		"option overrun":    ok[:len(ok)-1],
		"relay-forw":        append([]byte{12}, ok[1:]...),
		"option len 0xffff": append(bytes.Clone(ok[:4]), 0, 1, 0xff, 0xff, 1),
	} {
		if m, err := Parse(b); err == nil {
			t.Errorf("Parse(%s) = %+v, want an error", name, m)
		}
	}
	if _, err := ParseIA([]byte{1, 2, 3}); err == nil {
		t.Errorf("ParseIA(3 bytes) = nil error")
	}
	if _, err := ParseIAAddr(make([]byte, 23)); err == nil {
		t.Errorf("ParseIAAddr(23 bytes) = nil error")
	}
}

func TestMalformedIAIsAnsweredEmpty(t *testing.T) {
	s := mustServer(t, fullConfig())
	// An IA_NA of 5 bytes: too short, but its IAID is there.
	rep := handle(t, s, clientMsg(Solicit, Option{Code: OptIANA, Data: []byte{0, 0, 0, 4, 9}}))
	d, _ := rep.Options.Get(OptIANA)
	ia, err := ParseIA(d)
	if err != nil || ia.IAID != [4]byte{0, 0, 0, 4} {
		t.Errorf("IA_NA %+v (%v), want IAID 4", ia, err)
	}
	if rep := handle(t, s, clientMsg(Confirm, Option{Code: OptIANA, Data: []byte{1}})); rep != nil {
		t.Errorf("Confirm with a malformed IA_NA answered: %+v", rep)
	}
}

func TestEncodeDomains(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{"example.org"}, "076578616d706c65036f726700"},
		{[]string{"example.org."}, "076578616d706c65036f726700"},
		{[]string{"a.b", "c"}, "0161016200" + "016300"},
		{[]string{"."}, "00"},
	} {
		got, err := EncodeDomains(c.in...)
		if err != nil || hex.EncodeToString(got) != c.want {
			t.Errorf("EncodeDomains(%q) = %x, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"a..b", ".a", strings.Repeat("x", 64) + ".org", strings.Repeat("abcdefghi.", 26)} {
		if b, err := EncodeDomains(bad); err == nil {
			t.Errorf("EncodeDomains(%q) = %x, want an error", bad, b)
		}
	}
}

func TestNewServerValidates(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"no MAC":          func(c *Config) { c.MAC = nil },
		"v4 address":      func(c *Config) { c.Addr = netip.MustParseAddr("10.0.2.100") },
		"mapped address":  func(c *Config) { c.Addr = netip.MustParseAddr("::ffff:10.0.2.100") },
		"link-local":      func(c *Config) { c.Addr = netip.MustParseAddr("fe80::1") },
		"no address":      func(c *Config) { c.Addr = netip.Addr{} },
		"off-link":        func(c *Config) { c.OnLink = netip.MustParsePrefix("2001:db8:1::/64") },
		"v4 DNS":          func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("10.0.2.3")} },
		"bad search name": func(c *Config) { c.Search = []string{"a..b"} },
		"bad FQDN":        func(c *Config) { c.FQDN = strings.Repeat("x", 64) },
	} {
		cfg := fullConfig()
		mod(&cfg)
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%s) = nil error, want one", name)
		}
	}
}

// FuzzParse checks that Parse never panics, that what it accepts survives
// a round trip, and that the server answers it with something that parses.
func FuzzParse(f *testing.F) {
	f.Add(unhex(f, solicitHex))
	s := mustServer(f, fullConfig())
	for _, m := range []*Message{
		clientMsg(Request, serverIDOpt(s), iana(1, guest6)),
		clientMsg(Renew, serverIDOpt(s), iana(1, guest6, netip.MustParseAddr("2001:db8::2"))),
		clientMsg(Confirm, iana(3, guest6)),
		clientMsg(Solicit, iana(1), Option{Code: OptRapidCommit}, Option{Code: OptIAPD, Data: make([]byte, 12)}),
		clientMsg(InformationRequest),
	} {
		f.Add(m.Marshal())
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
		if !reflect.DeepEqual(again.Options, m.Options) && !(len(again.Options) == 0 && len(m.Options) == 0) {
			t.Fatalf("round trip changed the options:\n got %+v\nwant %+v", again, m)
		}
		if r := s.Handle(m); r != nil {
			if _, err := Parse(r.Marshal()); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if r.TxID != m.TxID {
				t.Fatalf("reply's transaction ID %x, want %x", r.TxID, m.TxID)
			}
		}
	})
}
