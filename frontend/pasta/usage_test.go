package pasta

import (
	"bytes"
	"strings"
	"testing"
)

func TestUsage(t *testing.T) {
	var b bytes.Buffer
	Usage(&b, "/usr/bin/pasta", ExtraOption{Name: "api-socket", HasArg: true, Usage: "  --api-socket PATH\tAPI socket\n"})
	text := b.String()
	head := "Usage: /usr/bin/pasta [OPTION]... [COMMAND] [ARGS]...\n" +
		"       /usr/bin/pasta [OPTION]... PID\n" +
		"       /usr/bin/pasta [OPTION]... --netns [PATH|NAME]\n\n"
	if !strings.HasPrefix(text, head) {
		t.Errorf("usage starts %q", text[:min(len(text), len(head))])
	}
	if !strings.HasSuffix(text, "  --api-socket PATH\tAPI socket\n") {
		t.Errorf("extra option's usage missing at the end")
	}
	// Every option of pasta mode is listed; the passt-only ones are not,
	// nor is the deprecated no-op --stderr (pasta's text omits it too).
	passtOnly := map[string]bool{"socket": true, "socket-path": true, "one-off": true, "no-dhcp-dns": true,
		"no-dhcp-search": true, "vhost-user": true, "print-capabilities": true, "repair-path": true, "stderr": true}
	for _, o := range longOpts {
		listed := strings.Contains(text, "--"+o.name+" ") || strings.Contains(text, "--"+o.name+"\t")
		if listed == passtOnly[o.name] {
			t.Errorf("--%s listed: %v", o.name, listed)
		}
		if o.id < 256 && !passtOnly[o.name] && !strings.Contains(text, "  -"+string(rune(o.id))+", --"+o.name) {
			t.Errorf("-%c, --%s not listed together", o.id, o.name)
		}
	}
}
