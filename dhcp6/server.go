package dhcp6

import (
	"fmt"
	"net/netip"
)

// Infinity is the lifetime and renewal time that never ends (RFC 8415
// §7.7). pasta hands its one address out for ever: the address is the
// host's and never changes while the network lives, so a client has
// nothing to renew.
const Infinity = 0xffffffff

// Config describes the server.
type Config struct {
	// MAC is the server's Ethernet address: its DUID is the DUID-LL of
	// it. Required.
	MAC []byte

	// Addr is the address every client's IA_NA gets (the network has one
	// guest). Required: a global IPv6 unicast address.
	Addr netip.Addr

	// OnLink is the link's prefix, against which Confirm checks a
	// client's addresses. Required, containing Addr.
	OnLink netip.Prefix

	// DNS, when not empty, is sent as option 23; Search as option 24
	// and FQDN as option 39 (RFC 4704, the server-chosen name).
	DNS    []netip.Addr
	Search []string
	FQDN   string
}

// Server answers clients. It holds no state beyond its configuration
// (every client gets the same address for ever), so it is safe for
// concurrent use.
type Server struct {
	cfg  Config
	duid []byte
	// info are the options every reply carries after the Server and
	// Client IDs: DNS, search list, FQDN.
	info Options
}

// NewServer validates cfg.
func NewServer(cfg Config) (*Server, error) {
	switch {
	case len(cfg.MAC) != 6:
		return nil, fmt.Errorf("dhcp6: server MAC %x is not an Ethernet address", cfg.MAC)
	case !cfg.Addr.Is6() || cfg.Addr.Is4In6() || !cfg.Addr.IsGlobalUnicast() || cfg.Addr.Zone() != "":
		return nil, fmt.Errorf("dhcp6: address %v is not a global IPv6 unicast address", cfg.Addr)
	case !cfg.OnLink.IsValid() || !cfg.OnLink.Contains(cfg.Addr):
		return nil, fmt.Errorf("dhcp6: on-link prefix %v does not contain the address %v", cfg.OnLink, cfg.Addr)
	}
	s := &Server{cfg: cfg, duid: DUIDLL(cfg.MAC)}
	if len(cfg.DNS) > 0 {
		var b []byte
		for _, a := range cfg.DNS {
			if !a.Is6() || a.Is4In6() {
				return nil, fmt.Errorf("dhcp6: DNS server %v is not an IPv6 address", a)
			}
			b = append(b, a.AsSlice()...)
		}
		s.info = append(s.info, Option{Code: OptDNSServers, Data: b})
	}
	if len(cfg.Search) > 0 {
		b, err := EncodeDomains(cfg.Search...)
		if err != nil {
			return nil, fmt.Errorf("dhcp6: search list: %w", err)
		}
		s.info = append(s.info, Option{Code: OptDomainList, Data: b})
	}
	if cfg.FQDN != "" {
		b, err := EncodeDomains(cfg.FQDN)
		if err != nil {
			return nil, fmt.Errorf("dhcp6: FQDN: %w", err)
		}
		// Flags 0: the server updates nothing in DNS (RFC 4704 §4.1).
		s.info = append(s.info, Option{Code: OptFQDN, Data: append([]byte{0}, b...)})
	}
	return s, nil
}

// DUID is the server's DUID, its Server Identifier.
func (s *Server) DUID() []byte { return append([]byte{}, s.duid...) }

// Handle answers one client message (RFC 8415 §18.3). It returns nil for
// a message to drop: not a client's, for another server, or missing what
// its type requires (§16).
func (s *Server) Handle(req *Message) *Message {
	clientID, hasClient := req.Options.Get(OptClientID)
	serverID, hasServer := req.Options.Get(OptServerID)
	ours := hasServer && string(serverID) == string(s.duid)
	switch req.Type {
	case Solicit, Confirm, Rebind:
		// §16.2, §16.5, §16.7: a Client ID, no Server ID.
		if !hasClient || hasServer {
			return nil
		}
	case Request, Renew, Release, Decline:
		// §16.4, §16.6, §16.8, §16.9: a Client ID and ours as Server ID.
		if !hasClient || !ours {
			return nil
		}
	case InformationRequest:
		// §16.12: no IA; a Server ID, if any, ours.
		if hasServer && !ours || req.Options.Has(OptIANA) || req.Options.Has(OptIATA) || req.Options.Has(OptIAPD) {
			return nil
		}
	default:
		return nil // server and relay messages; nothing for us
	}

	rep := &Message{Type: Reply, TxID: req.TxID}
	rep.Options = append(rep.Options, Option{Code: OptServerID, Data: s.DUID()})
	if hasClient {
		rep.Options = append(rep.Options, Option{Code: OptClientID, Data: append([]byte{}, clientID...)})
	}

	switch req.Type {
	case Solicit:
		// §18.3.1: Advertise, or Reply at once when the client asks for
		// Rapid Commit (§18.3.1, §21.14).
		if req.Options.Has(OptRapidCommit) {
			rep.Options = append(rep.Options, Option{Code: OptRapidCommit})
		} else {
			rep.Type = Advertise
		}
		if !s.bind(req, rep) {
			// §18.3.9: nothing to assign: say so, and still give the
			// configuration.
			rep.Options = append(rep.Options, Status(StatusNoAddrsAvail))
		}
	case Request, Renew, Rebind:
		// §18.3.2, §18.3.4, §18.3.5: the binding, again.
		s.bind(req, rep)
	case Confirm:
		// §18.3.3: are the client's addresses on this link? Without any
		// address there is nothing to confirm and no reply.
		seen, onLink := false, true
		for _, d := range req.Options.All(OptIANA) {
			ia, err := ParseIA(d)
			if err != nil {
				return nil
			}
			for _, ad := range ia.Options.All(OptIAAddr) {
				a, err := ParseIAAddr(ad)
				if err != nil {
					return nil
				}
				seen = true
				onLink = onLink && s.cfg.OnLink.Contains(a.Addr)
			}
		}
		if !seen {
			return nil
		}
		if onLink {
			rep.Options = append(rep.Options, Status(StatusSuccess))
		} else {
			rep.Options = append(rep.Options, Status(StatusNotOnLink))
		}
	case Release, Decline:
		// §18.3.7, §18.3.8: nothing is held per client; a declined
		// address is still the only one there is.
		rep.Options = append(rep.Options, Status(StatusSuccess))
		return rep
	}
	rep.Options = append(rep.Options, s.info...)
	return rep
}

// bind adds to rep an IA_NA for each of req's, holding the address, and
// an IA_TA or IA_PD with NoAddrsAvail/NoPrefixAvail for each of those
// (none is handed out). It reports whether req had an IA_NA to bind. A
// malformed IA_NA is answered as if it were empty.
func (s *Server) bind(req *Message, rep *Message) bool {
	had := false
	for _, opt := range req.Options {
		switch opt.Code {
		case OptIANA:
			had = true
			in, _ := ParseIA(opt.Data)
			if len(opt.Data) >= 4 {
				copy(in.IAID[:], opt.Data)
			}
			out := IA{IAID: in.IAID, T1: Infinity, T2: Infinity}
			out.Options = append(out.Options, Option{Code: OptIAAddr, Data: IAAddr{Addr: s.cfg.Addr, Preferred: Infinity, Valid: Infinity}.Marshal()})
			// §18.3.4, §18.3.5: other addresses the client holds in this
			// IA are not ours to give: lifetimes 0.
			for _, ad := range in.Options.All(OptIAAddr) {
				if a, err := ParseIAAddr(ad); err == nil && a.Addr != s.cfg.Addr && req.Type != Solicit && req.Type != Request {
					out.Options = append(out.Options, Option{Code: OptIAAddr, Data: IAAddr{Addr: a.Addr}.Marshal()})
				}
			}
			rep.Options = append(rep.Options, Option{Code: OptIANA, Data: out.Marshal()})
		case OptIATA, OptIAPD:
			// An IAID and, for IA_PD, T1 and T2 of 0, then the status.
			n := 4
			code := StatusNoAddrsAvail
			if opt.Code == OptIAPD {
				n, code = 12, StatusNoPrefixAvail
			}
			d := make([]byte, n)
			copy(d, opt.Data)
			if opt.Code == OptIAPD {
				clear(d[4:])
			}
			d = Options{Status(code)}.Append(d)
			rep.Options = append(rep.Options, Option{Code: opt.Code, Data: d})
		}
	}
	return had
}

// Lifetimes returns the preferred and valid lifetimes of addr in an IA_NA
// option's data; ok is false if the IA does not hold it.
func Lifetimes(iana []byte, addr netip.Addr) (preferred, valid uint32, ok bool) {
	ia, err := ParseIA(iana)
	if err != nil {
		return 0, 0, false
	}
	for _, d := range ia.Options.All(OptIAAddr) {
		if a, err := ParseIAAddr(d); err == nil && a.Addr == addr {
			return a.Preferred, a.Valid, true
		}
	}
	return 0, 0, false
}
