package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultLeaseTime is libslirp's lease time (LEASE_TIME, 24 h).
const DefaultLeaseTime = 24 * time.Hour

// offerHold is how long an offered address stays reserved for the client
// that was offered it, waiting for its DHCPREQUEST.
const offerHold = time.Minute

// declined marks a pool address a client declined (RFC 2131 §4.3.3: some
// other host uses it), in lease.client.
const declined = "declined"

// Config describes the server.
type Config struct {
	// Network is the IPv4 network the server hands out addresses of
	// (e.g. 10.0.2.0/24). Required.
	Network netip.Prefix

	// ServerID is the server identifier (option 54), the router (option
	// 3) and siaddr: network+2 on usernet's network. Required, inside
	// Network.
	ServerID netip.Addr

	// DNS, when not empty, is sent as option 6. Empty omits the option
	// (usernet's --disable-dns).
	DNS []netip.Addr

	// PoolStart and PoolSize are the addresses handed out: PoolStart,
	// PoolStart+1, ..., PoolSize of them, all inside Network. libslirp
	// (and so slirp4netns) uses network+15 and 16.
	PoolStart netip.Addr
	PoolSize  int

	// Extra are options sent as they are in every OFFER and ACK (pasta's
	// hostname, FQDN and search list: options 12, 81, 119). They do not
	// replace the server's own.
	Extra Options

	// LeaseTime is sent as option 51. 0 means DefaultLeaseTime.
	LeaseTime time.Duration

	// Now is the clock; nil means time.Now. Tests set it.
	Now func() time.Time
}

// Server is the lease table and the protocol logic. It is safe for
// concurrent use.
type Server struct {
	cfg   Config
	mask  netip.Addr
	first uint32 // PoolStart as a number

	mu     sync.Mutex
	leases []lease // guarded by mu; index i is PoolStart+i
}

// lease is one pool address. client "" means never handed out. The address
// is available to a client other than client once expiry has passed (an
// offer that was not taken, a lease that ran out or was released); the last
// client keeps the first claim on it.
type lease struct {
	client string
	expiry time.Time
}

// Reply is an answer to send, and where (RFC 2131 §4.1).
type Reply struct {
	Msg *Message

	// Broadcast: send to 255.255.255.255 and the link's broadcast
	// address. Otherwise send to IP and, at the link layer, to HW without
	// address resolution (the client may not have its address yet).
	Broadcast bool
	IP        netip.Addr
	HW        net.HardwareAddr
}

// NewServer checks cfg and returns a Server with an empty lease table.
func NewServer(cfg Config) (*Server, error) {
	if !cfg.Network.IsValid() || !cfg.Network.Addr().Is4() || cfg.Network.Bits() < 1 || cfg.Network.Bits() > 30 {
		return nil, fmt.Errorf("dhcp: network %v is not an IPv4 network with a prefix of 1-30", cfg.Network)
	}
	cfg.Network = cfg.Network.Masked()
	if !cfg.ServerID.Is4() || !cfg.Network.Contains(cfg.ServerID) {
		return nil, fmt.Errorf("dhcp: server identifier %v is not in %v", cfg.ServerID, cfg.Network)
	}
	if cfg.PoolSize < 1 || !cfg.PoolStart.Is4() || !cfg.Network.Contains(cfg.PoolStart) {
		return nil, fmt.Errorf("dhcp: pool %v+%d is not in %v", cfg.PoolStart, cfg.PoolSize, cfg.Network)
	}
	last := u32(cfg.PoolStart) + uint32(cfg.PoolSize) - 1
	if last < u32(cfg.PoolStart) || !cfg.Network.Contains(a32(last)) {
		return nil, fmt.Errorf("dhcp: pool %v+%d is not in %v", cfg.PoolStart, cfg.PoolSize, cfg.Network)
	}
	for _, d := range cfg.DNS {
		if !d.Is4() {
			return nil, fmt.Errorf("dhcp: DNS server %v is not IPv4", d)
		}
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = DefaultLeaseTime
	}
	if cfg.LeaseTime/time.Second > 0xfffffffe {
		return nil, errors.New("dhcp: lease time does not fit option 51")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{
		cfg:    cfg,
		mask:   a32(^uint32(0) << (32 - cfg.Network.Bits())),
		first:  u32(cfg.PoolStart),
		leases: make([]lease, cfg.PoolSize),
	}, nil
}

// Handle processes one request and returns the reply to send, or nil for
// none (not a request for us, a client that chose another server, a
// release, or no free address).
func (s *Server) Handle(req *Message) *Reply {
	if req.Op != OpRequest || req.GIAddr.IsValid() {
		// Replies, and relayed requests: a tap has no relay agents.
		return nil
	}
	client := req.ClientID()
	now := s.cfg.Now()

	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Type() {
	case Discover:
		i := s.pick(client, req.Addr(OptRequestedAddr), now)
		if i < 0 {
			return nil // pool exhausted: libslirp stays silent too
		}
		s.hold(i, client, now.Add(offerHold))
		return s.reply(req, Offer, s.addrAt(i), true)

	case Request:
		if sid := req.Addr(OptServerID); sid.IsValid() && sid != s.cfg.ServerID {
			// SELECTING, and the client chose another server; it
			// will not take our offer, which simply runs out.
			return nil
		}
		want := req.Addr(OptRequestedAddr)
		if !want.IsValid() {
			want = req.CIAddr // RENEWING / REBINDING
		}
		i, ok := s.index(want)
		if !ok || !s.available(i, client, now) {
			return s.nak(req)
		}
		s.hold(i, client, now.Add(s.cfg.LeaseTime))
		return s.reply(req, Ack, want, true)

	case Release:
		if i, ok := s.index(req.CIAddr); ok && s.leases[i].client == client {
			s.leases[i].expiry = now // free, but this client's first
		}
		return nil

	case Decline:
		if i, ok := s.index(req.Addr(OptRequestedAddr)); ok && s.leases[i].client == client {
			s.leases[i] = lease{client: declined, expiry: now.Add(s.cfg.LeaseTime)}
		}
		return nil

	case Inform:
		if !req.CIAddr.IsValid() {
			return nil
		}
		return s.reply(req, Ack, netip.Addr{}, false)
	}
	return nil
}

// pick chooses the address to offer client: its current or last lease,
// else the address it asks for if that is free, else the lowest address
// never handed out, else the one that has been free the longest. -1 if
// every address is taken.
//
// s.mu must be held.
func (s *Server) pick(client string, requested netip.Addr, now time.Time) int {
	for i, l := range s.leases {
		if l.client == client && s.available(i, client, now) {
			return i
		}
	}
	if i, ok := s.index(requested); ok && s.available(i, client, now) {
		return i
	}
	best := -1
	for i, l := range s.leases {
		if l.client == "" {
			return i
		}
		if s.available(i, client, now) && (best < 0 || l.expiry.Before(s.leases[best].expiry)) {
			best = i
		}
	}
	return best
}

// available reports whether pool address i may be given to client.
//
// s.mu must be held.
func (s *Server) available(i int, client string, now time.Time) bool {
	l := s.leases[i]
	return l.client == "" || l.client == client || !now.Before(l.expiry)
}

// hold gives pool address i to client until expiry (never shortening a
// lease the client already has on it), and forgets any other address the
// client had, so that each client holds at most one.
//
// s.mu must be held.
func (s *Server) hold(i int, client string, expiry time.Time) {
	for j := range s.leases {
		if j != i && s.leases[j].client == client {
			s.leases[j].expiry = time.Time{}
		}
	}
	l := &s.leases[i]
	if l.client != client || expiry.After(l.expiry) {
		l.expiry = expiry
	}
	l.client = client
}

// index returns the pool index of a, if a is in the pool.
func (s *Server) index(a netip.Addr) (int, bool) {
	if !a.Is4() {
		return 0, false
	}
	d := u32(a) - s.first
	if u32(a) < s.first || d >= uint32(len(s.leases)) {
		return 0, false
	}
	return int(d), true
}

func (s *Server) addrAt(i int) netip.Addr { return a32(s.first + uint32(i)) }

// reply builds an OFFER or ACK carrying yiaddr (invalid for INFORM) and the
// network's options; lease says whether to include the lease time.
func (s *Server) reply(req *Message, t MessageType, yiaddr netip.Addr, lease bool) *Reply {
	m := s.base(req, t)
	m.YIAddr = yiaddr
	m.SIAddr = s.cfg.ServerID
	if t == Ack {
		m.CIAddr = req.CIAddr // RFC 2131 table 3: ciaddr from the request
	}
	m.Options.SetAddrs(OptSubnetMask, s.mask)
	m.Options.SetAddrs(OptRouter, s.cfg.ServerID)
	if len(s.cfg.DNS) > 0 {
		m.Options.SetAddrs(OptDNS, s.cfg.DNS...)
	}
	if lease {
		m.Options.SetUint32(OptLeaseTime, uint32(s.cfg.LeaseTime/time.Second))
	}
	for c, v := range s.cfg.Extra {
		if _, own := m.Options[c]; !own {
			m.Options[c] = v
		}
	}
	return deliver(req, m)
}

// nak builds a DHCPNAK, which always goes to broadcast (RFC 2131 §4.1).
func (s *Server) nak(req *Message) *Reply {
	m := s.base(req, Nak)
	m.Options[OptMessage] = []byte("requested address not available")
	return &Reply{Msg: m, Broadcast: true}
}

// base starts a reply to req: header fields echoed as RFC 2131 table 3
// says, message type and server identifier.
func (s *Server) base(req *Message, t MessageType) *Message {
	m := &Message{
		Op:      OpReply,
		HType:   req.HType,
		HLen:    req.HLen,
		XID:     req.XID,
		Flags:   req.Flags,
		GIAddr:  req.GIAddr,
		CHAddr:  req.CHAddr,
		Options: Options{OptMessageType: {byte(t)}},
	}
	m.Options.SetAddrs(OptServerID, s.cfg.ServerID)
	return m
}

// deliver addresses a reply as RFC 2131 §4.1 says for a client on the
// server's own link (giaddr is 0): to ciaddr if the client has one; to
// broadcast if it asked for it (or its hardware address is not Ethernet's);
// otherwise to yiaddr at chaddr.
func deliver(req, m *Message) *Reply {
	r := &Reply{Msg: m}
	hw := req.HardwareAddr()
	switch {
	case req.CIAddr.IsValid() && req.HType == 1 && len(hw) == 6:
		r.IP, r.HW = req.CIAddr, hw
	case req.Flags&FlagBroadcast != 0 || req.HType != 1 || len(hw) != 6 || !m.YIAddr.IsValid():
		r.Broadcast = true
	default:
		r.IP, r.HW = m.YIAddr, hw
	}
	return r
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func a32(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
