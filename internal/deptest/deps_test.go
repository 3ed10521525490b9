// Package deptest enforces the package picture of docs/design.md: which
// package may import what. A new dependency edge is a design decision; make
// it here, with its reason, or not at all.
package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const mod = "github.com/usernet/usernet/"

// rules: for a package (by import path suffix), prefixes it must not depend
// on, directly or indirectly, each with the reason.
var rules = map[string]map[string]string{
	"dns":     {"gvisor.dev/": "dns serves whatever net.PacketConn/net.Listener it is handed", mod + "stack": "dns must not know the stack"},
	"apisock": {"gvisor.dev/": "the wire format must not depend on the stack", mod + "stack": "apisock talks to portfwd only"},
	"portfwd": {"gvisor.dev/": "portfwd reaches the namespace through its Dialer interface", mod + "stack": "the stack implements portfwd.Dialer, not the other way round"},
	"dhcp":    {"gvisor.dev/": "dhcp is the protocol only; the stack moves its packets", mod + "stack": "the stack uses dhcp, not the other way round"},
	"tap":     {"gvisor.dev/": "tap runs in the nsjoin child and must stay small"},
	"link":    {mod + "stack": "link moves frames for the stack, which sits on top of it", mod + "portfwd": "link knows frames, not flows"},
	"nsjoin":  {"gvisor.dev/": "the nsjoin child must stay small", mod + "stack": "nsjoin only hands over the fd"},
	"nsrun":   {"gvisor.dev/": "nsrun only makes namespaces", mod + "stack": "nsrun only makes namespaces"},
	"netplan": {"gvisor.dev/": "netplan is addresses only; every package reads it", mod: "netplan is a leaf: every usernet package may read it"},
	"relay":   {"gvisor.dev/": "relay sees connections as net.Conn; the stack adapts its gVisor conns", mod: "relay sits below stack and portfwd, which both use it"},
	"sandbox": {"gvisor.dev/": "sandbox runs first in every usernet process and must stay small", mod + "stack": "sandbox only confines the process"},
}

type pkg struct {
	ImportPath string
	Deps       []string
}

func TestDependencyRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "-deps=false", mod+"...").Output()
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
		for _, dep := range p.Deps {
			if strings.HasPrefix(dep, "github.com/spf13/pflag") && !strings.HasPrefix(name, "cmd/") {
				t.Errorf("%s depends on %s: flags are parsed in cmd/ only", name, dep)
			}
			if strings.HasPrefix(dep, "gvisor.dev/") && !allowedGVisor(name) {
				t.Errorf("%s depends on %s: only stack/ and link/ (and bench/, cmd/ through them) may import gVisor", name, dep)
			}
			for bad, why := range rules[name] {
				if strings.HasPrefix(dep, bad) {
					t.Errorf("%s depends on %s: %s", name, dep, why)
				}
			}
		}
	}
	for name := range rules {
		// A rule for a directory with Go files that go list did not
		// report is a typo; a directory not written yet is not.
		if files, _ := filepath.Glob(filepath.Join("..", "..", name, "*.go")); len(files) > 0 && !seen[name] {
			t.Errorf("rule for package %s, which go list did not report", name)
		}
	}
}

func allowedGVisor(name string) bool {
	return name == "stack" || name == "link" || strings.HasPrefix(name, "stack/") || strings.HasPrefix(name, "bench") || strings.HasPrefix(name, "cmd/") || name == "integration"
}
