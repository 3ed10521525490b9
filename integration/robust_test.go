package integration

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["garbage"] = helperGarbage
}

// GarbageResult is what the garbage helper reports.
type GarbageResult struct {
	Sent int    `json:"sent"`
	Err  string `json:"err,omitempty"`
}

// helperGarbage writes N malformed Ethernet frames on IFACE through a packet socket: random
// bytes under every ethertype usernet parses, and IPv4/IPv6/TCP/UDP/ICMP headers whose
// lengths, offsets and options lie. Usage: garbage IFACE N SEED.
func helperGarbage(args []string) (any, error) {
	if err := argN(args, 3, "garbage IFACE N SEED"); err != nil {
		return nil, err
	}
	ifi, err := net.InterfaceByName(args[0])
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return nil, err
	}
	seed, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	res := GarbageResult{}
	for i := 0; i < n; i++ {
		frame := garbageFrame(r, ifi.HardwareAddr)
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			if err == unix.ENOBUFS || err == unix.EAGAIN {
				time.Sleep(time.Millisecond)
				continue
			}
			res.Err = fmt.Sprintf("frame %d (%d bytes): %v", i, len(frame), err)
			break
		}
		res.Sent++
	}
	return res, nil
}

func garbageFrame(r *rand.Rand, src net.HardwareAddr) []byte {
	eth := make([]byte, 14)
	if r.IntN(2) == 0 {
		copy(eth, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	} else {
		for i := 0; i < 6; i++ {
			eth[i] = byte(r.UintN(256))
		}
	}
	copy(eth[6:], src)
	types := []uint16{0x0800, 0x86dd, 0x0806, uint16(r.UintN(1 << 16))}
	et := types[r.IntN(len(types))]
	binary.BigEndian.PutUint16(eth[12:], et)
	var body []byte
	switch et {
	case 0x0800:
		body = garbageIPv4(r)
	case 0x86dd:
		body = garbageIPv6(r)
	default:
		body = randomBytes(r, r.IntN(200))
	}
	return append(eth, body...)
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

// garbageIPv4 is an IPv4 packet to the gateway or the internet whose header fields lie.
func garbageIPv4(r *rand.Rand) []byte {
	if r.IntN(8) == 0 {
		return randomBytes(r, r.IntN(60))
	}
	payload := randomBytes(r, r.IntN(120))
	h := make([]byte, 20)
	h[0] = 0x40 | byte(5+r.IntN(11)) // IHL 5..15, often beyond the packet
	h[1] = byte(r.UintN(256))
	total := 20 + len(payload)
	switch r.IntN(4) {
	case 0:
		total = r.IntN(65536)
	case 1:
		total = r.IntN(20)
	}
	binary.BigEndian.PutUint16(h[2:], uint16(total))
	binary.BigEndian.PutUint16(h[4:], uint16(r.UintN(1<<16)))
	binary.BigEndian.PutUint16(h[6:], uint16(r.UintN(1<<16))) // flags + fragment offset
	h[8] = byte(r.UintN(256))
	h[9] = []byte{1, 6, 17, byte(r.UintN(256))}[r.IntN(4)]
	copy(h[12:16], []byte{10, 0, 2, 100})
	dst := [][]byte{{10, 0, 2, 2}, {10, 0, 2, 3}, {198, 51, 100, 254}, {10, 0, 2, 255}}[r.IntN(4)]
	copy(h[16:20], dst)
	if r.IntN(2) == 0 {
		binary.BigEndian.PutUint16(h[10:], checksum(h))
	}
	if len(payload) >= 14 && (h[9] == 6 || h[9] == 17) {
		// A transport header with believable ports and a lying length/offset.
		binary.BigEndian.PutUint16(payload[2:], []uint16{53, 80, 9, uint16(r.UintN(1 << 16))}[r.IntN(4)])
		payload[12] = byte(r.UintN(256)) // TCP data offset / UDP checksum byte
	}
	return append(h, payload...)
}

// garbageIPv6 is an IPv6 packet with a lying payload length or extension header chain.
func garbageIPv6(r *rand.Rand) []byte {
	if r.IntN(8) == 0 {
		return randomBytes(r, r.IntN(80))
	}
	payload := randomBytes(r, r.IntN(120))
	h := make([]byte, 40)
	h[0] = 0x60
	plen := len(payload)
	if r.IntN(3) == 0 {
		plen = r.IntN(65536)
	}
	binary.BigEndian.PutUint16(h[4:], uint16(plen))
	h[6] = []byte{0, 43, 44, 60, 58, 6, 17, byte(r.UintN(256))}[r.IntN(8)] // hop-by-hop, routing, fragment, dest opts, ICMPv6, ...
	h[7] = 64
	h[8] = 0xfe
	h[9] = 0x80
	h[23] = 1
	dst := [][]byte{
		{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
		{0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
		{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54},
	}[r.IntN(3)]
	copy(h[24:], dst)
	return append(h, payload...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestMalformedFrames: thousands of malformed frames from the namespace neither stop usernet
// nor break a connection that was open before them, and new connections still work after.
func TestMalformedFrames(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	tg := newTarget(t)
	un := startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-ipv6"}})
	p, got := hostHashServer(t)
	checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)

	for seed := 1; seed <= 4; seed++ {
		var res GarbageResult
		tg.helper(t, ctx, &res, "garbage", "tap0", "2500", strconv.Itoa(seed))
		if res.Err != "" || res.Sent == 0 {
			link, _ := tg.tryNsenter(ctx, "ip", "-s", "-d", "link", "show", "tap0")
			t.Fatalf("garbage helper (seed %d): %+v\ntap0:\n%s", seed, res, link)
		}
	}
	if un.exited() {
		t.Fatalf("usernet exited after malformed frames; stderr:\n%s", un.stderr.String())
	}
	p, got = hostHashServer(t)
	checkTCPUp(t, ctx, tg, "10.0.2.2:"+p, 1<<20, got)
	checkPing(t, tg, "10.0.2.2")
}

// TestNamespaceNotJoinable: a namespace the user may not join is a clear one-line error.
func TestNamespaceNotJoinable(t *testing.T) {
	setup(t)
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"init-netns", []string{"-c", "1", "tap0"}, "/proc/1/ns/net"},
		{"not-a-namespace", []string{"--netns-type=path", "/etc/hostname", "tap0"}, "/etc/hostname"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkFails(t, asUser(exec.Command(suite.bin, tc.args...)), tc.want)
		})
	}
}

// TestNoTunDevice: without /dev/net/tun the error names it, in one line, exit 1.
func TestNoTunDevice(t *testing.T) {
	setup(t)
	t.Parallel()
	tg := newTarget(t)
	// A private mount namespace (as root) hides /dev/net under a tmpfs; usernet then
	// runs in it as the unprivileged user.
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs none /dev/net && exec setpriv --reuid="$1" --regid="$2" --clear-groups "$3" -c "$4" tap0`,
		"sh", strconv.Itoa(int(suite.uid)), strconv.Itoa(int(suite.gid)), suite.bin, strconv.Itoa(tg.pid))
	checkFails(t, cmd, "/dev/net/tun")
}

// checkFails runs cmd (in suite.dir) and fails the test unless it exits 1
// with want in the first line of its stderr, as every usernet error does.
func checkFails(t *testing.T, cmd *exec.Cmd, want string) *proc {
	t.Helper()
	cmd.Dir = suite.dir
	p := startProc(t, cmd)
	t.Cleanup(p.stop)
	code := p.waitExit(t, 10*time.Second)
	if stderr := p.stderr.String(); code != 1 || !strings.Contains(firstLine(stderr), want) {
		t.Fatalf("%s: exit status %d, stderr:\n%s\nwant 1, first line containing %q", p.name, code, stderr, want)
	}
	return p
}
