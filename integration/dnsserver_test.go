package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a tiny authoritative server for usernet.test., on UDP and TCP at one address.
// A and AAAA queries for any name under usernet.test. get a4 and a6 (none if nil); TXT for
// big.usernet.test. gets bigTXT bytes (truncated over UDP); everything else NXDOMAIN.
// It records every query it sees.
type dnsServer struct {
	addr   string // host:port, the same for UDP and TCP
	a4, a6 net.IP
	pc     net.PacketConn
	ln     net.Listener
	wg     sync.WaitGroup

	mu      sync.Mutex
	queries []string // "udp A x.usernet.test. from 1.2.3.4:5"
}

const bigTXT = 3000

// newDNSServer listens on ip:port (port "0": any port free for both UDP and TCP); listen
// makes the sockets (so they can be made in another netns).
func newDNSServer(ip, port string, a4, a6 net.IP, listen func(func() error) error) (*dnsServer, error) {
	s := &dnsServer{a4: a4, a6: a6}
	var err error
	for try := 0; try < 20; try++ {
		err = listen(func() error {
			pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, port))
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", pc.LocalAddr().String())
			if err != nil {
				pc.Close()
				return err
			}
			s.pc, s.ln = pc, ln
			return nil
		})
		if err == nil || port != "0" {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dns server on %s: %w", net.JoinHostPort(ip, port), err)
	}
	s.addr = s.pc.LocalAddr().String()
	s.wg.Go(s.serveUDP)
	s.wg.Go(s.serveTCP)
	return s, nil
}

func sameNetns(fn func() error) error { return fn() }

// startDNS runs a DNS server on 127.0.0.1 (any port) for the test's duration.
func startDNS(t *testing.T, a4 string) *dnsServer {
	t.Helper()
	s, err := newDNSServer("127.0.0.1", "0", net.ParseIP(a4), nil, sameNetns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *dnsServer) Close() {
	s.pc.Close()
	s.ln.Close()
	s.wg.Wait()
}

func (s *dnsServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

func (s *dnsServer) serveUDP() {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if reply := s.answer(buf[:n], "udp", from); reply != nil {
			s.pc.WriteTo(reply, from)
		}
	}
}

func (s *dnsServer) serveTCP() {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		conns.Go(func() {
			defer c.Close()
			for {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var l uint16
				if err := binary.Read(c, binary.BigEndian, &l); err != nil {
					return
				}
				q := make([]byte, l)
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				reply := s.answer(q, "tcp", c.RemoteAddr())
				if reply == nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(reply))), reply...)); err != nil {
					return
				}
			}
		})
	}
}

func (s *dnsServer) answer(q []byte, proto string, from net.Addr) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	s.mu.Lock()
	s.queries = append(s.queries, fmt.Sprintf("%s %v %s from %v", proto, question.Type, question.Name, from))
	s.mu.Unlock()

	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	name := strings.ToLower(question.Name.String())
	ours := strings.HasSuffix(name, ".usernet.test.")
	if !ours {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(question)
	b.StartAnswers()
	rr := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 60}
	switch {
	case !ours:
	case question.Type == dnsmessage.TypeA:
		var a [4]byte
		copy(a[:], s.a4.To4())
		b.AResource(rr, dnsmessage.AResource{A: a})
	case question.Type == dnsmessage.TypeAAAA && s.a6 != nil:
		var a [16]byte
		copy(a[:], s.a6.To16())
		b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a})
	case question.Type == dnsmessage.TypeTXT && name == "big.usernet.test.":
		if proto == "udp" {
			rh.Truncated = true
			b = dnsmessage.NewBuilder(nil, rh)
			b.StartQuestions()
			b.Question(question)
			break
		}
		var txt []string
		for n := 0; n < bigTXT; n += 250 {
			txt = append(txt, strings.Repeat(string(rune('a'+n/250%26)), 250))
		}
		b.TXTResource(rr, dnsmessage.TXTResource{TXT: txt})
	}
	reply, err := b.Finish()
	if err != nil {
		return nil
	}
	return reply
}

// The suite's shared DNS servers, started by startSuiteDNS.
var (
	// resolvDNS serves the nameserver in the private host netns's /etc/resolv.conf
	// (127.0.0.53:53): what slirp4netns, and usernet without --dns-upstream, relay to.
	resolvDNS *dnsServer
	// honeypot listens on port 53 of every address in the fake internet, which also owns
	// 10.0.2.0/24 and fd00::/64 (netns.sh): a query that reaches it left the virtual network
	// for the host's network, which must never happen.
	honeypot *dnsServer
)

const resolvAnswer = "198.51.100.53"

func startSuiteDNS() error {
	var err error
	resolvDNS, err = newDNSServer(suite.resolvNS, "53", net.ParseIP(resolvAnswer), net.ParseIP("2001:db8::53"), sameNetns)
	if err != nil {
		return err
	}
	honeypot, err = newDNSServer("::", "53", net.ParseIP("198.51.100.66"), net.ParseIP("2001:db8::66"),
		func(fn func() error) error { return inNetns(suite.inetNetns, fn) })
	return err
}

func stopSuiteDNS() {
	for _, s := range []*dnsServer{resolvDNS, honeypot} {
		if s != nil {
			s.Close()
		}
	}
}

func leakReport() string {
	if honeypot == nil {
		return ""
	}
	q := honeypot.seen()
	if len(q) == 0 {
		return ""
	}
	return "  DNS queries seen by the fake internet's port 53: " + strings.Join(q, "\n  ") + "\n"
}
