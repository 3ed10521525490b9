package apisock

import (
	"bytes"
	"encoding/json"
	"math"

	"github.com/usernet/usernet/policy"
)

// usernet's commands beyond slirp4netns's. Their replies are QMP-shaped as
// slirp4netns's are ({"return":...} or {"error":{"desc":...}}), and a
// server without the part a command needs answers "unknown execute", as
// slirp4netns does for every one of them.

// Policy is the egress policy as the API changes it.
type Policy interface {
	Add(r policy.Rule, before int) (int, error)
	Remove(id int) error
	List() []policy.Entry
	Default() policy.Action
}

// Stats gives get_stats and list_connections their answers, each a value
// that encodes to a JSON object (get_stats) or array (list_connections).
type Stats interface {
	Stats() any
	Connections() any
}

// extra answers execute if it is one of usernet's commands; ok is false for
// a command it does not know (or whose part the server lacks).
func (s *Server) extra(execute string, args map[string]json.RawMessage) (reply []byte, ok bool) {
	if c := s.cfg.Capture; c != nil {
		switch execute {
		case "start_capture":
			path, ok := stringArg(args["path"])
			if !ok || path == "" {
				return descReply("start_capture: bad path"), true
			}
			id, err := c.Start(path)
			if err != nil {
				return descReply("start_capture: " + err.Error()), true
			}
			return returnReply(struct {
				ID int `json:"id"`
			}{id}), true
		case "stop_capture":
			id, ok := intArg(args["id"], 1, math.MaxInt32)
			if !ok {
				return descReply("stop_capture: bad id"), true
			}
			if err := c.Stop(int(id)); err != nil {
				return descReply("stop_capture: " + err.Error()), true
			}
			return []byte(replyEmpty), true
		}
	}
	if st := s.cfg.Stats; st != nil {
		switch execute {
		case "get_stats":
			return returnReply(st.Stats()), true
		case "list_connections":
			return returnReply(st.Connections()), true
		}
	}
	p := s.cfg.Policy
	switch {
	case p == nil:
		return nil, false
	case execute == "add_rule":
		return s.addRule(p, args), true
	case execute == "remove_rule":
		return s.removeRule(p, args), true
	case execute == "list_rules":
		return s.listRules(p), true
	}
	return nil, false
}

// add_rule {"rule":RULE, "before":ID, "kill_existing":BOOL} → {"return":{"id":N}}
func (s *Server) addRule(p Policy, args map[string]json.RawMessage) []byte {
	for k := range args {
		if k != "rule" && k != "before" && k != "kill_existing" {
			return descReply("add_rule: unknown argument " + k)
		}
	}
	if isNull(args["rule"]) {
		return descReply("add_rule: missing rule")
	}
	var r policy.Rule
	if err := json.Unmarshal(args["rule"], &r); err != nil {
		return descReply("add_rule: " + err.Error())
	}
	before := int64(0)
	if !isNull(args["before"]) {
		var ok bool
		if before, ok = intArg(args["before"], 1, math.MaxInt32); !ok {
			return descReply("add_rule: bad before")
		}
	}
	kill, ok := boolArg(args["kill_existing"])
	if !ok {
		return descReply("add_rule: bad kill_existing")
	}
	id, err := p.Add(r, int(before))
	if err != nil {
		return descReply("add_rule: " + err.Error())
	}
	killed := 0
	if kill && s.cfg.KillDenied != nil {
		killed = s.cfg.KillDenied()
	}
	return returnReply(struct {
		ID     int `json:"id"`
		Killed int `json:"killed"`
	}{id, killed})
}

// remove_rule {"id":N, "kill_existing":BOOL} → {"return":{}}
func (s *Server) removeRule(p Policy, args map[string]json.RawMessage) []byte {
	id, ok := intArg(args["id"], 1, math.MaxInt32)
	if !ok {
		return descReply("remove_rule: bad id")
	}
	kill, ok := boolArg(args["kill_existing"])
	if !ok {
		return descReply("remove_rule: bad kill_existing")
	}
	if err := p.Remove(int(id)); err != nil {
		return descReply("remove_rule: " + err.Error())
	}
	if kill && s.cfg.KillDenied != nil {
		s.cfg.KillDenied()
	}
	return []byte(replyEmpty)
}

// list_rules → {"return":{"default":"deny","rules":[{"id":1,"rule":RULE},...]}}
func (s *Server) listRules(p Policy) []byte {
	rules := p.List()
	if rules == nil {
		rules = []policy.Entry{}
	}
	return returnReply(struct {
		Default string         `json:"default"`
		Rules   []policy.Entry `json:"rules"`
	}{p.Default().String(), rules})
}

// boolArg reads an optional boolean; absent or null is false.
func boolArg(raw json.RawMessage) (bool, bool) {
	if isNull(raw) {
		return false, true
	}
	var b bool
	if json.Unmarshal(raw, &b) != nil {
		return false, false
	}
	return b, true
}

func returnReply(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(struct {
		Return any `json:"return"`
	}{v}); err != nil {
		return descReply("cannot encode the reply: " + err.Error())
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// descReply is an error reply for any text (errorReply takes only
// constants that need no escaping).
func descReply(desc string) []byte {
	b, _ := json.Marshal(struct {
		Error struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}{struct {
		Desc string `json:"desc"`
	}{desc}})
	return b
}
