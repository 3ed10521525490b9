package integration

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usernet/usernet/pcap"
)

// TestObserve: get_stats and list_connections show the namespace's
// traffic and its live connections, and `usernet capture` takes a live
// pcap of a running, sandboxed usernet over its API socket (usernet
// writes no file for it).
func TestObserve(t *testing.T) {
	setup(t)
	usernetOnly(t, "statistics and live capture")
	t.Parallel()
	dir := shortUserDir(t, "ob")
	sock := filepath.Join(dir, "api.sock")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--enable-sandbox", "--enable-seccomp", "--api-socket", sock}})

	capFile := filepath.Join(dir, "live.pcap")
	capCmd := asUser(exec.Command(suite.bin, "capture", "--api-socket", sock, "-w", capFile, "--duration", "3s"))
	capCmd.Dir = suite.dir
	capProc := startProc(t, capCmd)
	time.Sleep(500 * time.Millisecond) // the capture is installed on its request

	// A connection held open while the stats are read, and a ping.
	ln := listenTCP(t, "127.0.0.1:0")
	held := make(chan net.Conn, 1)
	serveTCP(t, ln, func(c *net.TCPConn) { held <- c; time.Sleep(5 * time.Second) })
	ctx := testContext(t, 30*time.Second)
	go tg.tryNsenter(ctx, suite.helper, "tcp-up", "10.0.2.2:"+port(ln.Addr()), "10") // the server holds it
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the held connection never arrived")
	}
	checkPing(t, tg, suite.inet4) // a ping flow (the gateway's echo is answered by usernet itself)

	reply, err := apiUserExchange(t, sock, `{"execute":"get_stats"}`)
	var stats struct {
		Return struct {
			Tap struct {
				RxFrames uint64 `json:"rx_frames"`
				TxFrames uint64 `json:"tx_frames"`
			} `json:"tap"`
			Flows      map[string]int    `json:"flows"`
			FlowsTotal map[string]uint64 `json:"flows_total"`
		} `json:"return"`
	}
	if err != nil || json.Unmarshal([]byte(reply), &stats) != nil {
		t.Fatalf("get_stats: %q, %v", reply, err)
	}
	if stats.Return.Tap.RxFrames == 0 || stats.Return.Tap.TxFrames == 0 {
		t.Errorf("get_stats: no frames counted: %s", reply)
	}
	if stats.Return.Flows["tcp"] < 1 || stats.Return.FlowsTotal["icmp"] < 1 {
		t.Errorf("get_stats: the live TCP connection or the ping flow not counted: %s", reply)
	}
	reply, err = apiUserExchange(t, sock, `{"execute":"list_connections"}`)
	if err != nil || !bytes.Contains([]byte(reply), []byte(`"remote":"10.0.2.2:`+port(ln.Addr())+`","host":"127.0.0.1:`+port(ln.Addr())+`"`)) {
		t.Errorf("list_connections: %s, %v; want the held connection", reply, err)
	}

	if code := capProc.waitExit(t, 15*time.Second); code != 0 {
		t.Fatalf("usernet capture exited %d: %s", code, capProc.stderr.String())
	}
	b, err := os.ReadFile(capFile)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := pcap.ReadAll(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the live capture does not parse: %v", err)
	}
	echo := 0
	for _, r := range recs {
		f := r.Data
		// Ethernet, IPv4, ICMP echo request to the fake internet.
		if len(f) > 34 && f[12] == 0x08 && f[13] == 0 && f[23] == 1 && bytes.Equal(f[30:34], net.ParseIP(suite.inet4).To4()) && f[34] == 8 {
			echo++
		}
	}
	if echo == 0 {
		t.Errorf("the live capture has %d frames, none the echo request to %s", len(recs), suite.inet4)
	}
}

// TestCaptureFile: start_capture writes a pcap file of the tap until
// stop_capture; a sandboxed usernet refuses it (it may create no file)
// and points to the stream.
func TestCaptureFile(t *testing.T) {
	setup(t)
	usernetOnly(t, "live capture")
	t.Parallel()
	dir := shortUserDir(t, "cf")
	sock := filepath.Join(dir, "api.sock")
	tg := newTarget(t)
	startUsernet(t, tg, usernetOpts{flags: []string{"-c", "--api-socket", sock}})
	capFile := filepath.Join(dir, "file.pcap")
	reply, err := apiExchange(sock, `{"execute":"start_capture","arguments":{"path":"`+capFile+`"}}`, 10*time.Second)
	if err != nil || reply != `{"return":{"id":1}}` {
		t.Fatalf("start_capture: %q, %v", reply, err)
	}
	if reply, _ := apiExchange(sock, `{"execute":"start_capture","arguments":{"path":"`+capFile+`"}}`, 10*time.Second); !strings.Contains(reply, "file exists") {
		t.Errorf("start_capture on an existing file: %q", reply)
	}
	checkPing(t, tg, suite.inet4)
	if reply, err := apiExchange(sock, `{"execute":"stop_capture","arguments":{"id":1}}`, 10*time.Second); err != nil || reply != `{"return":{}}` {
		t.Fatalf("stop_capture: %q, %v", reply, err)
	}
	b, err := os.ReadFile(capFile)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := pcap.ReadAll(bytes.NewReader(b))
	if err != nil || len(recs) == 0 {
		t.Errorf("the capture file: %d frames, %v", len(recs), err)
	}

	sandboxed := filepath.Join(dir, "sb.sock")
	tg2 := newTarget(t)
	startUsernet(t, tg2, usernetOpts{flags: []string{"-c", "--enable-sandbox", "--api-socket", sandboxed}})
	if reply, err := apiUserExchange(t, sandboxed, `{"execute":"start_capture","arguments":{"path":"`+filepath.Join(dir, "x.pcap")+`"}}`); err != nil || !strings.Contains(reply, "usernet capture") {
		t.Errorf("start_capture in the sandbox: %q, %v; want the error that points to the stream", reply, err)
	}
}
