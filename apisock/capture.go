package apisock

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"time"
)

// capture: {"execute":"capture"} turns the connection into a live pcap
// stream of the tap's frames. The reply {"return":{}} comes first, then
// the pcap data, until the client closes its end or usernet stops. The
// stream never holds a slot, and at most maxCaptures run at once. Nothing
// is written to a file by usernet, so a capture works in the sandbox.

// Capturer streams the tap's frames in pcap format to w until ctx ends or
// a write fails; it must never stall the data path for a slow w. Start
// and Stop run a capture into a file that usernet itself creates
// (start_capture, stop_capture), where its sandbox allows that.
type Capturer interface {
	Stream(ctx context.Context, w io.Writer) error
	Start(path string) (id int, err error)
	Stop(id int) error
}

const maxCaptures = 4

// errorReply, not descReply: no JSON encoding in every process's initializers.
var replyCaptureBusy = errorReply("capture: too many captures at once")

// isCapture says whether raw is a capture request.
func isCapture(raw json.RawMessage) bool {
	var req struct {
		Execute string `json:"execute"`
	}
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &req) == nil && req.Execute == "capture"
}

// streamCapture serves a capture request on cn, whose slot it gives back
// first.
func (s *Server) streamCapture(ctx context.Context, cn *conn) {
	s.release(cn)
	c := cn.c
	if s.captures.Add(1) > maxCaptures {
		s.captures.Add(-1)
		c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
		c.Write(replyCaptureBusy)
		return
	}
	defer s.captures.Add(-1)
	c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
	if _, err := c.Write([]byte(replyEmpty)); err != nil {
		return
	}
	c.SetWriteDeadline(time.Time{})
	c.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The client ends the capture by closing (or half-closing) its end.
	reader := make(chan struct{})
	go func() {
		defer close(reader)
		io.Copy(io.Discard, c)
		cancel()
	}()
	err := s.cfg.Capture.Stream(ctx, c)
	if err != nil && ctx.Err() == nil {
		s.logf("api socket: capture: %v", err)
	}
	c.Close() // ends the reader
	<-reader
}
