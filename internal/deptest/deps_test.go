// Package deptest enforces the package picture of README's "Layout" and
// docs/design.md: which package may import what. Every package of the
// module has a rule here, and a package may depend (directly or not) on
// the module packages its rule names and on nothing else of the module. A
// new package or a new dependency edge is a design decision: make it here,
// with its reason, or not at all.
package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/usernet/usernet/"

// rule is one package's place in the picture.
type rule struct {
	why    string   // what the package is, as far as its imports go
	gvisor bool     // may depend on gVisor
	may    []string // module packages it may depend on, directly or indirectly
}

// The layers, bottom up: leaves (netplan, relay, dhcp, dhcp6, dns, tap, pollfd, ratelog,
// sandbox, nsrun, frontend/pasta, pcap), then link on tap, stack on link,
// portfwd beside stack (it reaches the namespace through its Dialer
// interface, which stack implements), apisock on portfwd, and cmd/usernet
// wiring all of them.
var rules = map[string]rule{
	"netplan":           {why: "addresses only: a leaf every package may read"},
	"relay":             {why: "sees connections as net.Conn: stack and portfwd adapt theirs to it"},
	"dhcp":              {why: "the protocol only: stack moves its packets"},
	"dhcp6":             {why: "the protocol only: stack moves its packets"},
	"dns":               {why: "serves whatever net.PacketConn/net.Listener it is handed", may: []string{"internal/ratelog"}},
	"internal/ratelog":  {why: "rate-limited log lines: a leaf"},
	"tap":               {why: "says how the tap is opened and configured; nsjoin's child makes the calls", may: []string{"netplan"}},
	"sandbox":           {why: "runs first in every usernet process and must stay small"},
	"nsrun":             {why: "only makes namespaces"},
	"hostif":            {why: "reads the host's template interface with netlink, nothing else", may: []string{"netplan"}},
	"pcap":              {why: "the capture file format only: link sees it as a link.Capture, cmd/usernet wires it"},
	"policy":            {why: "decides flows by address, protocol, port and name; knows no packets or sockets"},
	"internal/pollfd":   {why: "waits on fds"},
	"internal/memtrim":  {why: "returns the heap of a burst to the system"},
	"internal/procs":    {why: "adapts GOMAXPROCS to how much work queues for the Ps"},
	"frontend/pasta":    {why: "pasta's command line only: the command builds on it"},
	"internal/testutil": {why: "helpers for tests; no production package may import it"},
	"internal/deptest":  {why: "this test"},
	"nsjoin":            {why: "only joins the namespaces and hands over the tap's fd", may: []string{"tap", "netplan", "internal/pollfd"}},
	"link":              {why: "moves frames for the stack, which sits on top of it", gvisor: true, may: []string{"tap", "netplan"}},
	"stack": {why: "terminates the namespace's flows; portfwd, dns and apisock sit on top of it",
		gvisor: true, may: []string{"dhcp", "dhcp6", "internal/ratelog", "link", "netplan", "policy", "relay", "tap"}},
	"portfwd":                 {why: "reaches the namespace through its Dialer interface, which stack implements", may: []string{"netplan", "relay"}},
	"loopfwd":                 {why: "relays the namespace's loopback to the host's; listeners are handed in", may: []string{"relay"}},
	"autofwd":                 {why: "adds and removes forwards; reads files it is handed", may: []string{"portfwd", "netplan", "relay"}},
	"apisock":                 {why: "the wire format over portfwd and policy, nothing else", may: []string{"portfwd", "netplan", "relay", "policy"}},
	"cmd/usernet":             {why: "wiring", gvisor: true, may: []string{"*"}},
	"integration":             {why: "runs the binary; its code is in _test.go files"},
	"bench/cmd/usernet-bench": {why: "drives the binaries: standard library only"},
}

type pkg struct {
	ImportPath string
	Deps       []string
}

func TestDependencyRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := map[string]bool{}
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		name := strings.TrimPrefix(p.ImportPath, mod)
		seen[name] = true
		r, ok := rules[name]
		if !ok {
			t.Errorf("package %s has no rule in internal/deptest: say what it may import, and why", name)
			continue
		}
		for _, dep := range p.Deps {
			switch {
			case strings.HasPrefix(dep, "github.com/spf13/pflag") && !strings.HasPrefix(name, "cmd/"):
				t.Errorf("%s depends on %s: flags are parsed in cmd/ only", name, dep)
			case strings.HasPrefix(dep, "gvisor.dev/") && !r.gvisor:
				t.Errorf("%s depends on %s: only stack and link import gVisor (%s: %s)", name, dep, name, r.why)
			case strings.HasPrefix(dep, mod):
				d := strings.TrimPrefix(dep, mod)
				if !slices.Contains(r.may, d) && !slices.Contains(r.may, "*") {
					t.Errorf("%s depends on %s, which its rule does not allow (%s: %s)", name, d, name, r.why)
				}
			}
		}
	}
	for name := range rules {
		if !seen[name] {
			t.Errorf("rule for package %s, which go list did not report", name)
		}
	}
}

// notAtStart are packages that cmd/usernet must not link: their initializers run in every
// usernet process, at every start, whatever it is asked to do.
var notAtStart = map[string]string{
	"regexp": "compiles nothing usernet needs at start (gVisor's log compiled one: patch 0011); " +
		"its initializers and unicode's tables cost every start",
}

func TestStartupDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", mod+"cmd/usernet").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if why, ok := notAtStart[dep]; ok {
			t.Errorf("cmd/usernet depends on %s: %s", dep, why)
		}
	}
}
