package apisock

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzHandleRequest feeds arbitrary bytes through the request reader and the
// dispatcher, as a client that sends them and half-closes would. Whatever
// comes in, the reply must be one compact JSON object without a trailing
// newline, of one of the shapes slirp4netns sends, and the Forwarder must
// only ever see rules that passed the wire checks. The seed corpus is in
// testdata/fuzz/FuzzHandleRequest.
func FuzzHandleRequest(f *testing.F) {
	for _, seed := range []string{
		`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_port":80}}`,
		`{"execute":"list_hostfwd"}`,
		`{"execute":"remove_hostfwd","arguments":{"id":1}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fwd := &fakeForwarder{}
		s := &Server{cfg: Config{Forwarder: fwd}, logf: func(string, ...any) {}}
		raw, err := readRequest(bytes.NewReader(data))
		reply := s.handle(context.Background(), raw, err)
		if reply == nil {
			t.Fatalf("no reply to %q (only a silent client gets none)", data)
		}
		checkReply(t, data, reply)
		for _, r := range fwd.Rules() {
			if (r.Proto != "tcp" && r.Proto != "udp") || r.HostPort == 0 || r.GuestPort == 0 {
				t.Fatalf("request %q: forwarder got an unchecked rule %+v", data, r)
			}
		}
	})
}

// checkReply asserts the shape of every reply this package can send.
func checkReply(t *testing.T, req, reply []byte) {
	t.Helper()
	var compact bytes.Buffer
	if err := json.Compact(&compact, reply); err != nil || !bytes.Equal(compact.Bytes(), reply) {
		t.Fatalf("request %q: reply %q is not compact JSON (%v)", req, reply, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(reply, &m); err != nil || len(m) != 1 {
		t.Fatalf("request %q: reply %q is not an object with one member", req, reply)
	}
	switch {
	case m["return"] != nil:
		if s := string(m["return"]); s != "{}" && !strings.HasPrefix(s, `{"id":`) {
			t.Fatalf("request %q: unexpected return %s", req, s)
		}
	case m["entries"] != nil:
		var entries []listEntry
		if err := json.Unmarshal(m["entries"], &entries); err != nil {
			t.Fatalf("request %q: bad entries in %s: %v", req, reply, err)
		}
	case m["error"] != nil:
		var e struct{ Desc string }
		if err := json.Unmarshal(m["error"], &e); err != nil || !knownError(e.Desc) {
			t.Fatalf("request %q: unknown error reply %s", req, reply)
		}
	default:
		t.Fatalf("request %q: reply %s is none of return, entries, error", req, reply)
	}
}

func knownError(desc string) bool {
	switch desc {
	case errParse, errNotObject, errNoExecute, errUnknown, errTooLarge, errAddFailed, errRemoveID, errRemoveFailed:
		return true
	}
	field, ok := strings.CutPrefix(desc, errAddPrefix)
	return ok && isRuleField(field)
}
