package dns

import (
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Names, when set in Config, vets the name of every query before it is
// relayed and sees the addresses of every answer before the client does:
// the egress policy's domain rules are made of these two calls.
type Names interface {
	// Allow says whether name (as asked, possibly with a trailing dot)
	// may be resolved; if not, the client gets rcode instead.
	Allow(name string) (ok bool, rcode dnsmessage.RCode)
	// Answered reports the A and AAAA addresses of an answer to a query
	// for name, with the least of their TTLs; called before the answer
	// is sent, so a client that connects at once finds them known.
	Answered(name string, addrs []netip.Addr, ttl time.Duration)
}

// refusal returns the reply to q if f.names refuses a name it asks for,
// or nil to relay q. A query that does not parse is relayed: the upstream
// answers it as it would anyway, and Answered never sees an address for a
// name that was not vetted (learn parses the question the same way).
func (f *Forwarder) refusal(q []byte) []byte {
	if f.names == nil {
		return nil
	}
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) == 0 {
		return nil
	}
	for _, question := range qs {
		ok, rcode := f.names.Allow(question.Name.String())
		if ok {
			continue
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
			ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
			RecursionAvailable: true, RCode: rcode,
		})
		if b.StartQuestions() != nil {
			return nil
		}
		for _, q := range qs {
			if b.Question(q) != nil {
				return nil
			}
		}
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		return out
	}
	return nil
}

// learn tells f.names the addresses that reply gives for q's name.
func (f *Forwarder) learn(q, reply []byte) {
	if f.names == nil {
		return
	}
	var p dnsmessage.Parser
	if _, err := p.Start(q); err != nil {
		return
	}
	question, err := p.Question()
	if err != nil {
		return
	}
	if _, err := p.Start(reply); err != nil {
		return
	}
	if err := p.SkipAllQuestions(); err != nil {
		return
	}
	var addrs []netip.Addr
	var ttl uint32
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			break
		}
		switch h.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return
			}
			addrs = append(addrs, netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return
			}
			addrs = append(addrs, netip.AddrFrom16(r.AAAA))
		default:
			if p.SkipAnswer() != nil {
				return
			}
			continue
		}
		if len(addrs) == 1 || h.TTL < ttl {
			ttl = h.TTL
		}
	}
	if len(addrs) > 0 {
		f.names.Answered(question.Name.String(), addrs, time.Duration(ttl)*time.Second)
	}
}
