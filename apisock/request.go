package apisock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/netip"
	"os"
	"strconv"

	"github.com/usernet/usernet/portfwd"
)

// maxRequest is slirp4netns's buffer: a request of this many bytes or more is
// "too large message" (api.c reads once into 4096 bytes and rejects a full buffer).
const maxRequest = 4096

// The replies, byte for byte as slirp4netns 1.2.0 writes them: compact JSON
// without a trailing newline. The wording of the errors is api.c's, including
// the "bad request: " prefix on failures that were not the client's fault.
const (
	replyEmpty      = `{"return":{}}`
	errParse        = `bad request: cannot parse JSON`
	errNotObject    = `bad request: json_object() failed`
	errNoExecute    = `bad request: no execute found`
	errUnknown      = `bad request: unknown execute`
	errTooLarge     = `bad request: too large message`
	errAddPrefix    = `bad request: add_hostfwd: bad arguments.` // + field
	errAddFailed    = `bad request: add_hostfwd: slirp_add_hostfwd failed`
	errRemoveID     = `bad request: remove_hostfwd: bad arguments.id`
	errRemoveFailed = `bad request: remove_hostfwd: slirp_remove_hostfwd failed`
	// usernet's own: a client of another user (SO_PEERCRED), and one that
	// finds every slot taken by clients with their requests under way.
	errPeer          = `permission denied: only the user running usernet may use this API socket`
	errBusy          = `busy: too many API clients at once, try again`
	errorReplyPrefix = `{"error":{"desc":"`
	errorReplySuffix = `"}}`
)

// errorReply returns the error reply for desc, which must need no escaping
// (all of the constants above).
func errorReply(desc string) []byte {
	return []byte(errorReplyPrefix + desc + errorReplySuffix)
}

var (
	errRequestTooLarge = errors.New("request too large")
	errNoRequest       = errors.New("client sent nothing") // timed out before any byte but whitespace
)

// readRequest reads one JSON value from r and returns its bytes. Like
// slirp4netns, it answers what has arrived: it returns as soon as the bytes
// read so far start with a complete JSON value (anything after it is ignored)
// or cannot be JSON, without waiting for a newline or EOF. Unlike slirp4netns,
// which reads once, it keeps reading while the value is incomplete, so a
// request split over several writes works. Errors: errRequestTooLarge once
// maxRequest bytes have arrived (slirp4netns: a full 4096-byte buffer),
// errNoRequest for a client that sent only whitespace and timed out, else a
// syntax or read error.
func readRequest(r io.Reader) (json.RawMessage, error) {
	buf := make([]byte, maxRequest)
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		if n >= maxRequest {
			return nil, errRequestTooLarge
		}
		if m > 0 || err != nil {
			raw, derr := decodeOne(buf[:n])
			switch {
			case derr == nil:
				return raw, nil
			case !errors.Is(derr, io.ErrUnexpectedEOF) && !errors.Is(derr, io.EOF):
				return nil, derr // cannot become valid JSON
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil, io.ErrUnexpectedEOF // incomplete or empty
		case errors.Is(err, os.ErrDeadlineExceeded) && len(bytes.TrimLeft(buf[:n], " \t\r\n")) == 0:
			return nil, errNoRequest
		case err != nil:
			return nil, err
		}
	}
}

// decodeOne returns the JSON value b starts with: io.EOF if b is only
// whitespace, io.ErrUnexpectedEOF if the value is incomplete.
func decodeOne(b []byte) (json.RawMessage, error) {
	var raw json.RawMessage
	err := json.NewDecoder(bytes.NewReader(b)).Decode(&raw)
	return raw, err
}

// handle turns the result of readRequest into the reply, nil for none.
func (s *Server) handle(ctx context.Context, raw json.RawMessage, readErr error) []byte {
	switch {
	case errors.Is(readErr, errNoRequest):
		return nil
	case errors.Is(readErr, errRequestTooLarge):
		return errorReply(errTooLarge)
	case readErr != nil:
		return errorReply(errParse)
	}
	if hasDuplicateKeys(raw) { // parson, slirp4netns's parser, rejects them
		return errorReply(errParse)
	}
	if raw = bytes.TrimLeft(raw, " \t\r\n"); len(raw) == 0 || raw[0] != '{' {
		return errorReply(errNotObject)
	}
	// A map, not a struct: keys match exactly, as in parson ("EXECUTE" is no
	// "execute"; encoding/json would match struct fields case-insensitively).
	var req map[string]json.RawMessage
	if err := json.Unmarshal(raw, &req); err != nil {
		return errorReply(errParse)
	}
	execute, ok := stringArg(req["execute"])
	if !ok {
		return errorReply(errNoExecute)
	}
	args := objectArgs(req["arguments"])
	switch execute {
	case "add_hostfwd":
		return s.addHostfwd(ctx, args)
	case "list_hostfwd":
		return s.listHostfwd()
	case "remove_hostfwd":
		return s.removeHostfwd(args)
	}
	if reply, ok := s.extra(execute, args); ok {
		return reply
	}
	return errorReply(errUnknown)
}

// addHostfwd checks the arguments in slirp4netns's order (proto, host_addr,
// host_port, guest_addr, guest_port), so the first bad one is the one it would
// name, then hands the Rule to the Forwarder, which checks the rest.
func (s *Server) addHostfwd(ctx context.Context, args map[string]json.RawMessage) []byte {
	var rule portfwd.Rule
	bad := func(field string) []byte {
		s.logf("api socket: add_hostfwd: bad %s %s", field, args[field])
		return errorReply(errAddPrefix + field)
	}
	proto, ok := stringArg(args["proto"])
	if !ok || (proto != "tcp" && proto != "udp") {
		return bad("proto") // slirp4netns 1.2 crashes on a missing or non-string proto
	}
	rule.Proto = proto
	if rule.HostAddr, ok = addrArg(args["host_addr"]); !ok {
		return bad("host_addr")
	}
	if rule.HostPort, ok = portArg(args["host_port"]); !ok {
		return bad("host_port")
	}
	if rule.GuestAddr, ok = addrArg(args["guest_addr"]); !ok {
		return bad("guest_addr")
	}
	if rule.GuestPort, ok = portArg(args["guest_port"]); !ok {
		return bad("guest_port")
	}
	id, err := s.cfg.Forwarder.Add(ctx, rule)
	if err != nil {
		s.logf("api socket: add_hostfwd: %v", err)
		var ae *portfwd.ArgError
		if errors.As(err, &ae) && isRuleField(ae.Field) {
			return errorReply(errAddPrefix + ae.Field)
		}
		return errorReply(errAddFailed)
	}
	return []byte(`{"return":{"id":` + strconv.Itoa(id) + `}}`)
}

// listEntry is one forward as list_hostfwd reports it; the field order is
// slirp4netns's.
type listEntry struct {
	ID        int    `json:"id"`
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  uint16 `json:"host_port"`
	GuestAddr string `json:"guest_addr"`
	GuestPort uint16 `json:"guest_port"`
}

// listHostfwd answers {"entries":[...]} WITHOUT the {"return":...} wrapper
// that slirp4netns's manual shows, because that is what the slirp4netns 1.2.0
// binary sends, and so what every client that works with slirp4netns today
// parses. rootlesskit and podman never send list_hostfwd (rootlesskit keeps
// its own port list; podman only adds and removes). docs/api.md has the
// details.
func (s *Server) listHostfwd() []byte {
	entries := s.cfg.Forwarder.List()
	out := struct {
		Entries []listEntry `json:"entries"`
	}{Entries: make([]listEntry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, listEntry{
			ID: e.ID, Proto: e.Proto,
			HostAddr: e.HostAddr.String(), HostPort: e.HostPort,
			GuestAddr: e.GuestAddr.String(), GuestPort: e.GuestPort,
		})
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil { // cannot happen: strings and ints
		s.logf("api socket: list_hostfwd: %v", err)
		return errorReply(errParse)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func (s *Server) removeHostfwd(args map[string]json.RawMessage) []byte {
	id, ok := intArg(args["id"], 1, math.MaxInt32)
	if !ok {
		return errorReply(errRemoveID)
	}
	if err := s.cfg.Forwarder.Remove(int(id)); err != nil {
		if errors.Is(err, portfwd.ErrNotFound) {
			return errorReply(errRemoveID)
		}
		s.logf("api socket: remove_hostfwd: %v", err)
		return errorReply(errRemoveFailed)
	}
	return []byte(replyEmpty)
}

// objectArgs returns the members of the "arguments" object; anything else
// (missing, null, not an object) is treated as no arguments.
func objectArgs(raw json.RawMessage) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || m == nil {
		return map[string]json.RawMessage{}
	}
	return m
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// stringArg returns a required string member.
func stringArg(raw json.RawMessage) (string, bool) {
	var s string
	if isNull(raw) || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// addrArg returns an optional address member: missing, null or "" is the zero
// Addr (the default, as slirp4netns treats them); a string must be an IP
// address (IPv6 too: a superset of slirp4netns 1.2, which takes IPv4 only).
func addrArg(raw json.RawMessage) (netip.Addr, bool) {
	if isNull(raw) {
		return netip.Addr{}, true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return netip.Addr{}, false
	}
	if s == "" {
		return netip.Addr{}, true
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

// portArg returns a required port member: a JSON number with an integral
// value in 1–65535 (8080, 8080.0 and 8.08e3 alike). slirp4netns 1.2 truncates
// 8080.5 and wraps 65536 and -1 around; we refuse them.
func portArg(raw json.RawMessage) (uint16, bool) {
	n, ok := intArg(raw, 1, math.MaxUint16)
	return uint16(n), ok
}

// intArg returns a JSON number member with an integral value in [lo, hi].
func intArg(raw json.RawMessage, lo, hi int64) (int64, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false // missing, or not a number ("80", true, null)
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f != math.Trunc(f) || f < float64(lo) || f > float64(hi) {
		return 0, false
	}
	return int64(f), true
}

func isRuleField(f string) bool {
	switch f {
	case "proto", "host_addr", "host_port", "guest_addr", "guest_port":
		return true
	}
	return false
}

// hasDuplicateKeys reports whether an object anywhere in raw (valid JSON)
// has the same key twice.
func hasDuplicateKeys(raw []byte) bool {
	type frame struct {
		keys      map[string]bool // nil for an array
		expectKey bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	// valueDone marks the end of a value inside the innermost container.
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].expectKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return false // io.EOF: done (raw was validated by the caller's Decode)
		}
		top := (*frame)(nil)
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{':
				stack = append(stack, &frame{keys: map[string]bool{}, expectKey: true})
			case '[':
				stack = append(stack, &frame{})
			default: // '}' or ']'
				stack = stack[:len(stack)-1]
				valueDone()
			}
			if (tok == '{' || tok == '[') && top != nil && top.keys != nil {
				top.expectKey = false // the container is top's current value
			}
		case string:
			if top != nil && top.keys != nil && top.expectKey {
				if top.keys[tok] {
					return true
				}
				top.keys[tok] = true
				top.expectKey = false
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
}
