package integration

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// udhcpc6Script reports what busybox udhcpc6 got, one KEY=VALUE a line, in lease6.out
// beside itself; it configures nothing.
const udhcpc6Script = `#!/bin/sh
[ "$1" = bound ] || exit 0
out="$(dirname "$0")/lease6.out"
printf 'ipv6=%s\ndns=%s\nsearch=%s\nfqdn=%s\nlease=%s\n' "$ipv6" "$dns" "$search" "$fqdn" "$lease" > "$out.tmp"
mv "$out.tmp" "$out"
`

// TestPastaDHCPv6: pasta's command line without --config-net leaves the tap down and
// unconfigured; the namespace configures itself. busybox udhcpc6 (the trixie root's static
// busybox) in the namespace must get the host's IPv6 address (2001:db8::1, copied from
// the private host's uplink) from the peer's DHCPv6 server, with the DNS server, search list
// and FQDN asked for with --dhcp-dns, --dhcp-search and --fqdn; the router advertisements
// (seen in the peer's --pcap capture) must set M. busybox udhcpc then gets the host's IPv4
// address with the DNS server, hostname and search list. With --no-dhcpv6 nothing answers
// DHCPv6.
func TestPastaDHCPv6(t *testing.T) {
	root := needTrixie(t)
	busybox := filepath.Join(root.dir, "bin/busybox")
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("the trixie root has no busybox (busybox-static): %v", err)
	}
	t.Parallel()
	for _, name := range pastaPeers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			peer := newPastaPeer(t, root, name)
			t.Run("lease", func(t *testing.T) {
				dir := shortUserDir(t, "d6-")
				tg, pcap := startPastaDHCPv6(t, root, peer, dir, "--dhcp-dns", "--dhcp-search",
					"-D", "2001:db8::53", "-D", "198.51.100.53", "-S", "example.org", "-H", "h", "--fqdn", "h.example.org")
				got, err := udhcpc6(t, tg, busybox, dir)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("udhcpc6 got %v", got)
				want := map[string]string{
					"ipv6":   hostAddr(t, "6").String(),
					"dns":    "2001:db8::53",
					"search": "example.org",
					"fqdn":   "h.example.org",
					"lease":  "4294967295", // infinite: the address never changes
				}
				for k, w := range want {
					v := got[k]
					if a, err := netip.ParseAddr(v); err == nil {
						v = a.String() // busybox prints every group in full
					}
					if v != w {
						t.Errorf("udhcpc6's %s = %q, want %q", k, got[k], w)
					}
				}
				checkDHCPv6Capture(t, pcap)

				// DHCP (IPv4) on the same tap: the host's address, with the same
				// options pasta adds (hostname 12, search list 119).
				got4, err := udhcpc4(t, tg, busybox, dir)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("udhcpc got %v", got4)
				for k, w := range map[string]string{"ip": hostAddr(t, "4").String(), "dns": "198.51.100.53", "hostname": "h", "search": "example.org"} {
					if got4[k] != w {
						t.Errorf("udhcpc's %s = %q, want %q", k, got4[k], w)
					}
				}
			})
			t.Run("no-dhcpv6", func(t *testing.T) {
				dir := shortUserDir(t, "d6-")
				tg, _ := startPastaDHCPv6(t, root, peer, dir, "--no-dhcpv6")
				if got, err := udhcpc6(t, tg, busybox, dir); err == nil {
					t.Errorf("--no-dhcpv6: udhcpc6 got a lease %v, want none", got)
				}
			})
		})
	}
}

// startPastaDHCPv6 starts the peer in the foreground, without --config-net and with no
// forwards, on a new target whose tap it names tap0, capturing the tap to DIR/tap.pcap; it
// brings the tap up once it is there and waits for the link-local address.
func startPastaDHCPv6(t *testing.T, root *trixieRoot, peer *pastaPeer, dir string, args ...string) (*target, string) {
	t.Helper()
	tg := newTarget(t)
	pcap := filepath.Join(dir, "tap.pcap")
	argv := append([]string{peer.bin, "-f", "-I", "tap0", "--pcap", pcap, "-t", "none", "-u", "none", "-T", "none", "-U", "none"}, args...)
	argv = append(argv, fmt.Sprint(tg.pid))
	cmd := root.command(testContext(t, 2*time.Minute), []string{rootPath}, argv...)
	p := startProc(t, cmd)
	t.Cleanup(p.stop)
	ctx := testContext(t, 30*time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := tg.tryNsenter(ctx, "ip", "link", "show", "tap0"); err == nil {
			break
		}
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("no tap0 in the namespace 10s after starting %s (exited %v); stderr:\n%s", peer.name, p.exited(), p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// pasta brings the namespace's lo up, also without --config-net.
	for deadline := time.Now().Add(5 * time.Second); !tg.links(t, ctx)["lo"].up(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the namespace's lo is still down", peer.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tg.nsenter(t, ctx, "ip", "link", "set", "tap0", "up")
	// udhcpc6 needs a link-local address that is no longer tentative (duplicate address
	// detection takes a second).
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, _ := tg.tryNsenter(ctx, "ip", "-6", "-o", "addr", "show", "dev", "tap0", "scope", "link")
		if strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap0 has no usable link-local address after 10s: %q", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return tg, pcap
}

// udhcpc6 runs busybox udhcpc6 on tap0 in tg until it has a lease (or gives up after 3
// solicits a second apart) and returns what the script saw.
func udhcpc6(t *testing.T, tg *target, busybox, dir string) (map[string]string, error) {
	t.Helper()
	script := filepath.Join(dir, "udhcpc6.sh")
	if err := os.WriteFile(script, []byte(udhcpc6Script), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "lease6.out")
	os.Remove(out)
	ctx := testContext(t, 30*time.Second)
	if o, err := tg.tryNsenter(ctx, busybox, "udhcpc6", "-i", "tap0", "-n", "-q", "-f", "-t", "3", "-T", "1",
		"-O", "dns", "-O", "search", "-s", script); err != nil {
		return nil, fmt.Errorf("udhcpc6 got no lease: %v (stdout %q)", err, o)
	}
	return readLease(out)
}

// udhcpc4Script is udhcpc6Script for busybox udhcpc: lease4.out.
const udhcpc4Script = `#!/bin/sh
[ "$1" = bound ] || exit 0
out="$(dirname "$0")/lease4.out"
printf 'ip=%s\ndns=%s\nhostname=%s\nsearch=%s\nlease=%s\n' "$ip" "$dns" "$hostname" "$search" "$lease" > "$out.tmp"
mv "$out.tmp" "$out"
`

// udhcpc4 runs busybox udhcpc on tap0 in tg until it has a lease and returns what the
// script saw.
func udhcpc4(t *testing.T, tg *target, busybox, dir string) (map[string]string, error) {
	t.Helper()
	script := filepath.Join(dir, "udhcpc4.sh")
	if err := os.WriteFile(script, []byte(udhcpc4Script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 30*time.Second)
	if o, err := tg.tryNsenter(ctx, busybox, "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "3", "-T", "1",
		"-O", "search", "-O", "hostname", "-s", script); err != nil {
		return nil, fmt.Errorf("udhcpc got no lease: %v (stdout %q)", err, o)
	}
	return readLease(filepath.Join(dir, "lease4.out"))
}

// readLease reads a script's KEY=VALUE lines.
func readLease(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the client exited 0 but its script wrote nothing: %v", err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// checkDHCPv6Capture reads the peer's capture of the tap: a router advertisement with the
// M flag, and DHCPv6 answers from a link-local address to port 546.
func checkDHCPv6Capture(t *testing.T, path string) {
	t.Helper()
	var ra, answers int
	// The peer writes its capture as it goes; the frames are there within a moment.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ra, answers = 0, 0
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("the capture: %v", err)
		}
		for _, f := range pcapFrames(b) {
			if len(f) < 14+40+8 || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
				continue
			}
			ip := f[14:]
			src := netip.AddrFrom16([16]byte(ip[8:24]))
			switch {
			case ip[6] == 58 && ip[40] == 134: // ICMPv6 router advertisement
				if flags := ip[40+5]; flags&0xc0 != 0x80 {
					t.Errorf("router advertisement with flags %#x, want M (0x80) without O", flags)
				}
				ra++
			case ip[6] == 17 && binary.BigEndian.Uint16(ip[40:]) == 547: // from a DHCPv6 server
				if !src.IsLinkLocalUnicast() || binary.BigEndian.Uint16(ip[42:]) != 546 {
					t.Errorf("DHCPv6 answer from %v to port %d, want from a link-local address to 546", src, binary.BigEndian.Uint16(ip[42:]))
				}
				answers++
			}
		}
		if ra > 0 && answers >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ra == 0 || answers < 2 {
		t.Errorf("the capture has %d router advertisements and %d DHCPv6 answers; want some, and an Advertise and a Reply", ra, answers)
	}
}

// pcapFrames returns the frames of a pcap file (the classic format, as --pcap writes it),
// as far as they are whole.
func pcapFrames(b []byte) [][]byte {
	if len(b) < 24 {
		return nil
	}
	order := binary.ByteOrder(binary.LittleEndian)
	if binary.BigEndian.Uint32(b) == 0xa1b2c3d4 || binary.BigEndian.Uint32(b) == 0xa1b23c4d {
		order = binary.BigEndian
	}
	var frames [][]byte
	for b = b[24:]; len(b) >= 16; {
		n := int(order.Uint32(b[8:]))
		if len(b) < 16+n {
			break
		}
		frames = append(frames, b[16:16+n])
		b = b[16+n:]
	}
	return frames
}
