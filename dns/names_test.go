package dns

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// recordingNames allows names under "ok.example." and records answers.
type recordingNames struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	ttl     time.Duration
}

func (r *recordingNames) Allow(name string) (bool, dnsmessage.RCode) {
	if strings.HasSuffix(name, "ok.example.") {
		return true, 0
	}
	return false, dnsmessage.RCodeNameError
}

func (r *recordingNames) Answered(name string, addrs []netip.Addr, ttl time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.answers == nil {
		r.answers = map[string][]netip.Addr{}
	}
	r.answers[name] = addrs
	r.ttl = ttl
}

func rcodeOf(t *testing.T, msg []byte) dnsmessage.RCode {
	t.Helper()
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		t.Fatalf("parse reply: %v", err)
	}
	return h.RCode
}

func TestNamesVetQueriesAndLearnAnswers(t *testing.T) {
	checkGoroutineLeaks(t)
	up := startFakeUpstream(t, "127.0.0.1")
	names := &recordingNames{}
	h := startForwarder(t, "127.0.0.1", Config{Upstream: up.addr, Names: names}, nil)

	// UDP: a refused name never reaches the upstream.
	msg, err := udpExchange(h.udpAddr, query(t, 7, "www.bad.example."), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := parseReply(msg); err != nil || got.ID != 7 || got.Name != "www.bad.example." || got.A.IsValid() {
		t.Errorf("refused reply = %+v, %v", got, err)
	}
	if rc := rcodeOf(t, msg); rc != dnsmessage.RCodeNameError {
		t.Errorf("rcode %v, want NXDOMAIN", rc)
	}
	if n := up.udpQueries.Load(); n != 0 {
		t.Errorf("upstream saw %d queries for a refused name", n)
	}
	msg, err = udpExchange(h.udpAddr, query(t, 8, "www.ok.example."), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantReply(t, msg, 8, "www.ok.example.")

	// TCP: the same, on one connection.
	c := dialTCP(t, h.tcpAddr)
	for _, q := range []struct {
		id   uint16
		name string
	}{{9, "bad.example."}, {10, "tcp.ok.example."}} {
		if err := writeMsg(c, query(t, q.id, q.name)); err != nil {
			t.Fatal(err)
		}
		msg, err := readMsg(c)
		if err != nil {
			t.Fatal(err)
		}
		if q.id == 9 {
			if rc := rcodeOf(t, msg); rc != dnsmessage.RCodeNameError {
				t.Errorf("TCP refused rcode %v", rc)
			}
		} else {
			wantReply(t, msg, q.id, q.name)
		}
	}
	names.mu.Lock()
	defer names.mu.Unlock()
	for _, n := range []string{"www.ok.example.", "tcp.ok.example."} {
		if a := names.answers[n]; len(a) != 1 || a[0] != answerA {
			t.Errorf("learned for %s: %v, want [%v]", n, a, answerA)
		}
	}
	if len(names.answers) != 2 || names.ttl != 60*time.Second {
		t.Errorf("answers %v, ttl %v", names.answers, names.ttl)
	}
}
