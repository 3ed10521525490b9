package integration

// Helper modes: the test binary, run with USERNET_TEST_HELPER=1, becomes a small client that
// runs inside a target namespace (through nsenter or `usernet run`) and prints one JSON
// object on stdout. Exit status 1 with a message on stderr means the helper itself broke;
// network outcomes (refused, timeout, ...) are results, reported in the JSON.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// helperTimeout bounds every network operation of a helper.
const helperTimeout = 10 * time.Second

var helpers = map[string]func(args []string) (any, error){
	"target":   helperTarget,
	"tcp-up":   helperTCPUp,
	"tcp-echo": helperTCPEcho,
	"dial":     helperDial,
	"udp-echo": helperUDPEcho,
	"udp-talk": helperUDPTalk,
	"udp-send": helperUDPSend,
	"ping":     helperPing,
	"dns":      helperDNS,
	"runcheck": helperRunCheck,
}

func helperMain(args []string) int {
	if len(args) == 0 || helpers[args[0]] == nil {
		fmt.Fprintf(os.Stderr, "helper: unknown mode %q\n", args)
		return 1
	}
	res, err := helpers[args[0]](args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", args[0], err)
		return 1
	}
	if code, ok := res.(exitCode); ok {
		return int(code)
	}
	if res != nil {
		if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", args[0], err)
			return 1
		}
	}
	return 0
}

type exitCode int

func argN(args []string, n int, usage string) error {
	if len(args) != n {
		return fmt.Errorf("usage: %s (got %q)", usage, args)
	}
	return nil
}

// helperTarget is the process whose namespaces usernet joins: it says "ready" once it
// runs in them, and exits when its stdin closes (the test ended) or it is killed.
func helperTarget(args []string) (any, error) {
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return nil, nil
}

// errName turns a dial or I/O error into an errno name ("ECONNREFUSED"), "timeout", or
// the error's text.
func errName(err error) string {
	if err == nil {
		return ""
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

// randomStream is a fast source of bytes that nobody can compress or predict.
func randomStream() io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], rand.Uint64())
	binary.LittleEndian.PutUint64(seed[8:], rand.Uint64())
	return rand.NewChaCha8(seed)
}

// TCPResult is what the tcp-up and tcp-echo helpers report.
type TCPResult struct {
	Err      string `json:"err,omitempty"`        // errno name of the first failure
	Sent     int64  `json:"sent"`                 // bytes written before CloseWrite
	SentSHA  string `json:"sent_sha"`             // sha256 of them
	Recv     int64  `json:"recv"`                 // bytes read until EOF
	RecvSHA  string `json:"recv_sha"`             // sha256 of them
	Reply    string `json:"reply,omitempty"`      // what was read, if short
	Duration string `json:"duration,omitempty"`   // of the whole exchange
	Mbps     int64  `json:"mbit_per_s,omitempty"` // sent+recv over the duration
}

// helperTCPUp dials ADDR, sends N random bytes, shuts down its write side, and then reads
// the reply until EOF: the half-close test. ADDR's server replies after the EOF.
func helperTCPUp(args []string) (any, error) {
	if err := argN(args, 2, "tcp-up ADDR N"); err != nil {
		return nil, err
	}
	return tcpExchange(args[0], args[1], false)
}

// helperTCPEcho dials ADDR, sends N random bytes while reading the echo concurrently,
// closes its write side after the last byte and reads until EOF.
func helperTCPEcho(args []string) (any, error) {
	if err := argN(args, 2, "tcp-echo ADDR N"); err != nil {
		return nil, err
	}
	return tcpExchange(args[0], args[1], true)
}

func tcpExchange(addr, count string, concurrent bool) (*TCPResult, error) {
	n, err := strconv.ParseInt(count, 10, 64)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res := &TCPResult{}
	c, err := net.DialTimeout("tcp", addr, helperTimeout)
	if err != nil {
		res.Err = errName(err)
		return res, nil
	}
	defer c.Close()
	tc := c.(*net.TCPConn)

	var wg sync.WaitGroup
	var werr error
	send := func() {
		h := sha256.New()
		res.Sent, werr = io.Copy(io.MultiWriter(tc, h), io.LimitReader(randomStream(), n))
		res.SentSHA = hex.EncodeToString(h.Sum(nil))
		if werr == nil {
			werr = tc.CloseWrite()
		}
	}
	if concurrent {
		wg.Go(send)
	} else {
		send()
	}
	h := sha256.New()
	var head strings.Builder
	res.Recv, err = io.Copy(io.MultiWriter(h, &limitedBuilder{&head, 256}), tc)
	res.RecvSHA = hex.EncodeToString(h.Sum(nil))
	res.Reply = head.String()
	wg.Wait()
	if werr != nil {
		res.Err = "write: " + errName(werr)
	} else if err != nil {
		res.Err = "read: " + errName(err)
	}
	d := time.Since(start)
	res.Duration = d.String()
	res.Mbps = int64(float64(res.Sent+res.Recv) * 8 / d.Seconds() / 1e6)
	return res, nil
}

type limitedBuilder struct {
	b *strings.Builder
	n int
}

func (l *limitedBuilder) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// DialResult is what the dial helper reports: "" when the connection was established.
type DialResult struct {
	Err string `json:"err"`
}

func helperDial(args []string) (any, error) {
	if err := argN(args, 1, "dial ADDR"); err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", args[0], helperTimeout)
	if err == nil {
		c.Close()
	}
	return DialResult{Err: errName(err)}, nil
}

// helperUDPSend sends one datagram from a connected UDP socket to ADDR and reads: it
// reports the read's error ("ECONNREFUSED" when an ICMP port unreachable came back,
// "timeout" after 5 s of silence, "" for an answer).
func helperUDPSend(args []string) (any, error) {
	if err := argN(args, 1, "udp-send ADDR"); err != nil {
		return nil, err
	}
	c, err := net.Dial("udp", args[0])
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write([]byte("anyone?")); err != nil {
		return DialResult{Err: errName(err)}, nil
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 100))
	return DialResult{Err: errName(err)}, nil
}

// UDPResult is what udp-echo reports.
type UDPResult struct {
	Flows  int      `json:"flows"`
	OK     int      `json:"ok"`
	Failed []string `json:"failed,omitempty"` // "local port: error", at most 10
}

// helperUDPEcho opens FLOWS sockets (so FLOWS source ports), sends a distinct payload from
// each, and expects it back from ADDR; each flow retries a few times, as UDP may drop.
func helperUDPEcho(args []string) (any, error) {
	if err := argN(args, 2, "udp-echo ADDR FLOWS"); err != nil {
		return nil, err
	}
	flows, err := strconv.Atoi(args[1])
	if err != nil {
		return nil, err
	}
	res := UDPResult{Flows: flows}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range flows {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			local, err := udpFlow(args[0], fmt.Sprintf("flow %d %x", i, rand.Uint64()))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				res.OK++
			} else if len(res.Failed) < 10 {
				res.Failed = append(res.Failed, fmt.Sprintf("%s: %v", local, err))
			}
		})
	}
	wg.Wait()
	return res, nil
}

// UDPTalkResult is what udp-talk reports: who answered, with what.
type UDPTalkResult struct {
	Replies map[string]string `json:"replies"` // source address → payload
}

// helperUDPTalk sends "hello" from one unconnected socket to ADDR (again each second until
// something comes back), collects datagrams from any source for up to 3 s until WANT
// sources have answered, then sends "answer" to every source other than ADDR.
func helperUDPTalk(args []string) (any, error) {
	if err := argN(args, 2, "udp-talk ADDR WANT"); err != nil {
		return nil, err
	}
	want, err := strconv.Atoi(args[1])
	if err != nil {
		return nil, err
	}
	to, err := net.ResolveUDPAddr("udp", args[0])
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	res := UDPTalkResult{Replies: map[string]string{}}
	buf := make([]byte, 2048)
	end := time.Now().Add(helperTimeout)
	for len(res.Replies) < want && time.Now().Before(end) {
		if len(res.Replies) == 0 {
			if _, err := c.WriteToUDP([]byte("hello"), to); err != nil {
				return nil, err
			}
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return nil, err
		}
		res.Replies[from.String()] = string(buf[:n])
	}
	for src := range res.Replies {
		if src != to.String() {
			a, _ := net.ResolveUDPAddr("udp", src)
			c.WriteToUDP([]byte("answer"), a)
		}
	}
	return res, nil
}

func udpFlow(addr, payload string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	local := c.LocalAddr().String()
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		if _, err := c.Write([]byte(payload)); err != nil {
			return local, err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return local, err
		}
		if got := string(buf[:n]); got != payload {
			return local, fmt.Errorf("echo %q, want %q", got, payload)
		}
		return local, nil
	}
	return local, errors.New("no echo after 5 tries")
}

// PingResult is what ping reports.
type PingResult struct {
	OK  bool   `json:"ok"`
	Err string `json:"err,omitempty"`
	RTT string `json:"rtt,omitempty"`
}

// helperPing sends ICMP echo requests from a raw socket (the helper is root in the target's
// user namespace) until one is answered, for up to helperTimeout.
func helperPing(args []string) (any, error) {
	if err := argN(args, 1, "ping ADDR"); err != nil {
		return nil, err
	}
	dst, err := net.ResolveIPAddr("ip", args[0])
	if err != nil {
		return nil, err
	}
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var typ, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.IP.To4() == nil {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		typ, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	deadline := time.Now().Add(helperTimeout)
	buf := make([]byte, 1500)
	for seq := 1; time.Now().Before(deadline); seq++ {
		payload := []byte(fmt.Sprintf("usernet ping %d", rand.Uint64()))
		msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return nil, err
		}
		sent := time.Now()
		if _, err := c.WriteTo(b, dst); err != nil {
			return PingResult{Err: errName(err)}, nil
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: next seq
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != replyType || from.String() != dst.String() {
				continue
			}
			// The ID may be rewritten by a proxy using ping sockets; the payload is ours.
			if e, ok := m.Body.(*icmp.Echo); ok && string(e.Data) == string(payload) {
				return PingResult{OK: true, RTT: time.Since(sent).String()}, nil
			}
		}
	}
	return PingResult{Err: "no reply within " + helperTimeout.String()}, nil
}

// DNSResult is what the dns helper reports.
type DNSResult struct {
	Err     string   `json:"err,omitempty"` // "timeout", errno name, ...
	RCode   string   `json:"rcode,omitempty"`
	TC      bool     `json:"tc,omitempty"`
	Answers []string `json:"answers,omitempty"` // A/AAAA as addresses, TXT as total length "txt:N"
}

// helperDNS sends one query (retrying over UDP) and reports the answer.
// Usage: dns SERVER udp|tcp A|AAAA|TXT NAME.
func helperDNS(args []string) (any, error) {
	if err := argN(args, 4, "dns SERVER udp|tcp A|AAAA|TXT NAME"); err != nil {
		return nil, err
	}
	server, proto, qtype, name := args[0], args[1], args[2], args[3]
	types := map[string]dnsmessage.Type{"A": dnsmessage.TypeA, "AAAA": dnsmessage.TypeAAAA, "TXT": dnsmessage.TypeTXT}
	t, ok := types[qtype]
	if !ok {
		return nil, fmt.Errorf("unknown type %q", qtype)
	}
	q, err := buildQuery(name, t)
	if err != nil {
		return nil, err
	}
	var reply []byte
	switch proto {
	case "udp":
		reply, err = queryUDP(server, q)
	case "tcp":
		reply, err = queryTCP(server, q)
	default:
		return nil, fmt.Errorf("unknown protocol %q", proto)
	}
	if err != nil {
		return DNSResult{Err: errName(err)}, nil
	}
	return parseReply(reply, q)
}

func buildQuery(name string, t dnsmessage.Type) ([]byte, error) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: uint16(rand.Uint32()), RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: n, Type: t, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	return b.Finish()
}

func queryUDP(server string, q []byte) ([]byte, error) {
	c, err := net.Dial("udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, 65535)
	var lastErr error
	for try := 0; try < 3; try++ {
		if _, err := c.Write(q); err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				lastErr = err
				break
			}
			if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
				return buf[:n], nil
			}
		}
		var ne net.Error
		if !errors.As(lastErr, &ne) || !ne.Timeout() {
			return nil, lastErr // e.g. ECONNREFUSED from an ICMP port unreachable
		}
	}
	return nil, lastErr
}

func queryTCP(server string, q []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", server, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(msg, q...)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	var l uint16
	if err := binary.Read(r, binary.BigEndian, &l); err != nil {
		return nil, err
	}
	reply := make([]byte, l)
	if _, err := io.ReadFull(r, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

func parseReply(reply, q []byte) (DNSResult, error) {
	var p dnsmessage.Parser
	h, err := p.Start(reply)
	if err != nil {
		return DNSResult{}, fmt.Errorf("parse reply: %w", err)
	}
	if h.ID != binary.BigEndian.Uint16(q) {
		return DNSResult{}, fmt.Errorf("reply ID %d, want %d", h.ID, binary.BigEndian.Uint16(q))
	}
	res := DNSResult{RCode: h.RCode.String(), TC: h.Truncated}
	if err := p.SkipAllQuestions(); err != nil {
		return res, err
	}
	for {
		ah, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return res, err
		}
		switch ah.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return res, err
			}
			res.Answers = append(res.Answers, net.IP(r.A[:]).String())
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return res, err
			}
			res.Answers = append(res.Answers, net.IP(r.AAAA[:]).String())
		case dnsmessage.TypeTXT:
			r, err := p.TXTResource()
			if err != nil {
				return res, err
			}
			n := 0
			for _, s := range r.TXT {
				n += len(s)
			}
			res.Answers = append(res.Answers, fmt.Sprintf("txt:%d", n))
		default:
			if err := p.SkipAnswer(); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

// RunCheck is what runcheck prints.
type RunCheck struct {
	TCP      *TCPResult `json:"tcp"`
	ResolvNS []string   `json:"resolv_nameservers"`
	Lookup   []string   `json:"lookup"`
	LookErr  string     `json:"lookup_err,omitempty"`
}

// helperRunCheck is the command for `usernet run`: from inside the namespaces usernet made,
// it sends bytes to TCPADDR (half-close), reads /etc/resolv.conf, and resolves NAME with the
// system resolver configuration. It prints the findings and exits with status 7, so that the
// test can tell the command's own exit status from usernet's.
func helperRunCheck(args []string) (any, error) {
	if err := argN(args, 2, "runcheck TCPADDR NAME"); err != nil {
		return nil, err
	}
	var res RunCheck
	var err error
	if res.TCP, err = tcpExchange(args[0], "4096", false); err != nil {
		return nil, err
	}
	res.ResolvNS, res.Lookup, res.LookErr = lookupAsNamespace(args[1])
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return nil, err
	}
	return exitCode(7), nil
}

// lookupAsNamespace reads the nameservers of the /etc/resolv.conf this process sees and
// resolves name with the Go resolver (which uses that file), as a program in the namespace
// would. It returns the nameservers, the addresses and the lookup error's name.
func lookupAsNamespace(name string) (nameservers, addrs []string, errText string) {
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "nameserver" {
				nameservers = append(nameservers, f[1])
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	addrs, err := (&net.Resolver{PreferGo: true}).LookupHost(ctx, name)
	return nameservers, addrs, errName(err)
}
