package apisock

import (
	"net/netip"
	"testing"

	"github.com/usernet/usernet/policy"
)

func TestPolicyCommands(t *testing.T) {
	p, err := policy.New(policy.Config{Default: policy.Deny})
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	s := startServer(t, Config{Forwarder: &fakeForwarder{}, Policy: p, KillDenied: func() int { killed++; return 2 }})
	path := s.cfg.Path
	for _, c := range []struct{ req, want string }{
		{`{"execute":"list_rules"}`, `{"return":{"default":"deny","rules":[]}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"allow","proto":"tcp","dst":"192.0.2.0/24","ports":"443"}}}`, `{"return":{"id":1,"killed":0}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"192.0.2.7"},"before":1,"kill_existing":true}}`, `{"return":{"id":2,"killed":2}}`},
		{`{"execute":"list_rules"}`, `{"return":{"default":"deny","rules":[{"id":2,"rule":{"action":"deny","dst":"192.0.2.7/32"}},{"id":1,"rule":{"action":"allow","proto":"tcp","dst":"192.0.2.0/24","ports":"443"}}]}}`},
		{`{"execute":"remove_rule","arguments":{"id":2}}`, `{"return":{}}`},
		{`{"execute":"remove_rule","arguments":{"id":2}}`, `{"error":{"desc":"remove_rule: no rule with id 2"}}`},
		{`{"execute":"remove_rule","arguments":{"id":"x"}}`, `{"error":{"desc":"remove_rule: bad id"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"10.0.0.1/8"}}}`, `{"error":{"desc":"add_rule: rule: prefix \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"any","ports":"0"}}}`, `{"error":{"desc":"add_rule: rule: bad port \"0\" (want 1 to 65535)"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","preset":"lan"}}}`, `{"error":{"desc":"add_rule: rule: unknown preset \"lan\" (want private or host)"}}`},
		{`{"execute":"add_rule","arguments":{}}`, `{"error":{"desc":"add_rule: missing rule"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"any"},"before":9}}`, `{"error":{"desc":"add_rule: no rule with id 9"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"any"},"kill_existing":1}}`, `{"error":{"desc":"add_rule: bad kill_existing"}}`},
		{`{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"any"},"position":1}}`, `{"error":{"desc":"add_rule: unknown argument position"}}`},
	} {
		if got := call(t, path, c.req, false); got != c.want {
			t.Errorf("%s\n got %s\nwant %s", c.req, got, c.want)
		}
	}
	if killed != 1 {
		t.Errorf("KillDenied called %d times, want 1", killed)
	}
	// A failed add changed nothing.
	if v := p.Check(policy.TCP, netip.MustParseAddrPort("192.0.2.7:443")); !v.Allow || v.RuleID != 1 {
		t.Errorf("Check after the commands = %+v", v)
	}
}

// Without a policy the commands are unknown, as to slirp4netns.
func TestPolicyCommandsUnknownWithoutPolicy(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}})
	for _, req := range []string{`{"execute":"list_rules"}`, `{"execute":"add_rule","arguments":{"rule":{"action":"deny","dst":"any"}}}`} {
		if got, want := call(t, s.cfg.Path, req, false), string(errorReply(errUnknown)); got != want {
			t.Errorf("%s = %s, want %s", req, got, want)
		}
	}
}

type fakeStats struct{}

func (fakeStats) Stats() any       { return map[string]int{"flows": 2} }
func (fakeStats) Connections() any { return []map[string]string{{"proto": "tcp"}} }

func TestStatsCommands(t *testing.T) {
	s := startServer(t, Config{Forwarder: &fakeForwarder{}, Stats: fakeStats{}})
	for req, want := range map[string]string{
		`{"execute":"get_stats"}`:        `{"return":{"flows":2}}`,
		`{"execute":"list_connections"}`: `{"return":[{"proto":"tcp"}]}`,
		`{"execute":"list_rules"}`:       string(errorReply(errUnknown)),
	} {
		if got := call(t, s.cfg.Path, req, false); got != want {
			t.Errorf("%s = %s, want %s", req, got, want)
		}
	}
}

// TestCaptureBusyReply: the reply to a fifth capture is built without encoding/json (it
// is made by the package's initializer in every process) and must read as descReply's.
func TestCaptureBusyReply(t *testing.T) {
	if got, want := string(replyCaptureBusy), string(descReply("capture: too many captures at once")); got != want {
		t.Errorf("replyCaptureBusy = %s, want %s", got, want)
	}
}
