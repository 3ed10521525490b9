package integration

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Environment variables of the suite. netns.sh sets the USERNET_NETNS_* and address ones.
const (
	envBin        = "USERNET_BIN"        // binary under test; default: go build ./cmd/usernet
	envDebugBin   = "USERNET_DEBUG_BIN"  // the same built with -tags usernet_debug; default: go build it
	envRequireNS  = "USERNET_REQUIRE_NS" // "1": a test that cannot set up namespaces fails instead of skipping
	envStrict     = "USERNET_STRICT"     // "1": tests of usernet-only behaviour also run against slirp4netns
	envHelper     = "USERNET_TEST_HELPER"
	envNetnsHost  = "USERNET_NETNS_HOST"
	envNetnsInet  = "USERNET_NETNS_INET"
	envInet4      = "USERNET_INET4"
	envInet6      = "USERNET_INET6"
	envResolvNS   = "USERNET_RESOLV_NS"
	testUser      = "usernet-test"
	shortTransfer = 64 << 20
	longTransfer  = 1 << 30
)

// suite is what TestMain prepared; read-only once tests run.
var suite struct {
	skipReason   string // non-empty: every test skips (or fails, with USERNET_REQUIRE_NS=1)
	dir          string // 0755 directory readable by testUser
	bin          string // the binary under test, inside dir
	debugBin     string // usernet built with -tags usernet_debug, inside dir; "" against slirp4netns
	helper       string // a copy of this test binary, inside dir
	isUsernet    bool   // false when bin is slirp4netns (no usernet-only features)
	hasAPISocket bool   // --help mentions --api-socket
	uid, gid     uint32 // testUser
	inet4        string // fake-internet host, e.g. 198.51.100.254
	inet6        string
	inetNetns    string // /run/netns/NAME of the fake internet
	resolvNS     string // nameserver of /etc/resolv.conf in the private host netns
}

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	flag.Parse()
	cleanup, err := prepare()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: set-up failed: %v\n", err)
		if cleanup != nil {
			cleanup()
		}
		os.Exit(2)
	}
	code := m.Run()
	if code == 0 && suite.skipReason == "" {
		if leaks := leakReport(); leaks != "" {
			fmt.Fprintf(os.Stderr, "FAIL: traffic for the virtual network reached the fake internet:\n%s", leaks)
			code = 1
		}
	}
	cleanup()
	os.Exit(code)
}

// prepare decides whether the suite can run, and if so builds or copies the binaries into
// a directory the unprivileged user can read, creates that user and opens /dev/net/tun.
// A returned error is a broken set-up (a build failure, say), not a reason to skip.
func prepare() (cleanup func(), err error) {
	cleanup = func() {}
	if os.Geteuid() != 0 {
		suite.skipReason = "integration tests need root (they create the user " + testUser +
			" and run usernet as that user); run `sudo ./test.sh`"
		return cleanup, nil
	}
	if reason := privateNetnsProblem(); reason != "" {
		suite.skipReason = reason
		return cleanup, nil
	}
	suite.inet4 = os.Getenv(envInet4)
	suite.inet6 = os.Getenv(envInet6)
	suite.inetNetns = filepath.Join("/run/netns", os.Getenv(envNetnsInet))
	suite.resolvNS = os.Getenv(envResolvNS)

	dir, err := os.MkdirTemp("", "usernet-integration-")
	if err != nil {
		return cleanup, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := os.Chmod(dir, 0o755); err != nil {
		return cleanup, err
	}
	suite.dir = dir

	self, err := os.Executable()
	if err != nil {
		return cleanup, err
	}
	suite.helper = filepath.Join(dir, "helper.test")
	if err := copyFile(self, suite.helper); err != nil {
		return cleanup, fmt.Errorf("copy test binary: %w", err)
	}

	suite.bin = filepath.Join(dir, "usernet")
	if src := os.Getenv(envBin); src != "" {
		if err := copyFile(src, suite.bin); err != nil {
			return cleanup, fmt.Errorf("%s=%s: %w", envBin, src, err)
		}
	} else if err := goBuild(suite.bin); err != nil {
		return cleanup, err
	}
	help, _ := exec.Command(suite.bin, "--help").CombinedOutput()
	if !bytes.Contains(help, []byte("--netns-type")) {
		return cleanup, fmt.Errorf("%s --help does not mention --netns-type (rootlesskit refuses such a binary):\n%s", suite.bin, help)
	}
	suite.isUsernet = bytes.Contains(help, []byte("--dns-upstream"))
	suite.hasAPISocket = bytes.Contains(help, []byte("--api-socket"))
	if suite.isUsernet {
		suite.debugBin = filepath.Join(dir, "usernet-debug")
		if src := os.Getenv(envDebugBin); src != "" {
			if err := copyFile(src, suite.debugBin); err != nil {
				return cleanup, fmt.Errorf("%s=%s: %w", envDebugBin, src, err)
			}
		} else if err := goBuild(suite.debugBin, "-tags", "usernet_debug"); err != nil {
			return cleanup, err
		}
	}

	if err := ensureUser(); err != nil {
		return cleanup, err
	}
	if err := openTun(); err != nil {
		return cleanup, err
	}
	if err := startSuiteDNS(); err != nil {
		return cleanup, err
	}
	cleanup = func() {
		stopSuiteDNS()
		os.RemoveAll(dir)
	}
	return cleanup, nil
}

// privateNetnsProblem says why the current process is not in the private network
// namespace that netns.sh makes, or "" if it is. The network rule: tests must not send
// anything to the machine's real network.
func privateNetnsProblem() string {
	const how = "; run the suite with ./test.sh, or integration/netns.sh go test ./integration"
	for _, v := range []string{envNetnsHost, envNetnsInet, envInet4, envInet6} {
		if os.Getenv(v) == "" {
			return v + " is not set: not inside the private network namespace" + how
		}
	}
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net") // may be hidden from us, in a container
	if err1 == nil && err2 == nil && self == init {
		return "running in the machine's root network namespace" + how
	}
	want, err := os.Stat(filepath.Join("/run/netns", os.Getenv(envNetnsHost)))
	got, err2 := os.Stat("/proc/self/ns/net")
	if err != nil || err2 != nil || !os.SameFile(want, got) {
		return "not inside netns " + os.Getenv(envNetnsHost) + how
	}
	return ""
}

func ensureUser() error {
	u, err := user.Lookup(testUser)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", testUser).CombinedOutput()
		if err != nil {
			return fmt.Errorf("useradd %s: %v: %s", testUser, err, out)
		}
		if u, err = user.Lookup(testUser); err != nil {
			return err
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return err
	}
	suite.uid, suite.gid = uint32(uid), uint32(gid)
	return nil
}

// openTun makes /dev/net/tun usable by the unprivileged user, as most distributions ship it.
func openTun() error {
	fi, err := os.Stat("/dev/net/tun")
	if err != nil {
		return fmt.Errorf("/dev/net/tun: %w (is the tun module loaded?)", err)
	}
	if fi.Mode().Perm()&0o006 != 0o006 {
		return os.Chmod("/dev/net/tun", fi.Mode().Perm()|0o666)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setup is the first call of every test: it skips (or fails, in CI) when the suite cannot run.
func setup(t *testing.T) {
	t.Helper()
	if suite.skipReason == "" {
		return
	}
	if os.Getenv(envRequireNS) == "1" {
		t.Fatalf("%s=1 but the namespace tests cannot run: %s", envRequireNS, suite.skipReason)
	}
	t.Skip(suite.skipReason)
}

// usernetOnly skips t when the binary under test is slirp4netns and t checks something
// only usernet does (set USERNET_STRICT=1 to run it anyway and watch slirp4netns fail).
func usernetOnly(t *testing.T, why string) {
	t.Helper()
	if !suite.isUsernet && os.Getenv(envStrict) != "1" {
		t.Skipf("binary under test is not usernet: %s", why)
	}
}

// asUser runs cmd as the unprivileged test user, with no supplementary groups, killed when
// the test process dies.
func asUser(cmd *exec.Cmd) *exec.Cmd {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: suite.uid, Gid: suite.gid, Groups: []uint32{}}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return cmd
}

// firstLine returns the first non-empty line of s.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			return l
		}
	}
	return ""
}

// goBuild builds ./cmd/usernet to out with extra go build flags.
func goBuild(out string, flags ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := append(append([]string{"build"}, flags...), "-o", out, "github.com/usernet/usernet/cmd/usernet")
	if b, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, b)
	}
	return nil
}
