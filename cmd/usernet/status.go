package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/usernet/usernet/portfwd"
	"github.com/usernet/usernet/stack"
)

// statsSource answers get_stats and list_connections for the API.
type statsSource struct {
	st    *stack.Stack
	reg   *portfwd.Registry
	start time.Time
}

// apiStats is get_stats's reply.
type apiStats struct {
	Uptime float64 `json:"uptime_s"`
	stack.Stats
	Forwards []portfwd.Stats `json:"forwards"`
}

func (s statsSource) Stats() any {
	return apiStats{Uptime: time.Since(s.start).Round(time.Millisecond).Seconds(), Stats: s.st.Stats(), Forwards: s.reg.Stats()}
}

func (s statsSource) Connections() any { return s.st.Connections() }

// statusMain is `usernet status` and `usernet top`: a person's view of a
// running usernet's get_stats and list_connections, once or every second.
func statusMain(argv []string, top bool, stdout, stderr io.Writer) int {
	name := "status"
	if top {
		name = "top"
	}
	fs := pflag.NewFlagSet("usernet "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.StringP("api-socket", "a", "", "the API socket of the usernet to show (required)")
	asJSON := fs.Bool("json", false, "print get_stats and list_connections as they come (status only)")
	every := fs.Duration("interval", time.Second, "refresh interval (top only)")
	if err := fs.Parse(argv); err != nil {
		return 2
	}
	if *sock == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usage: usernet %s --api-socket PATH\n", name)
		return 2
	}
	var prev *apiStats
	for {
		stats, err := apiCall(*sock, `{"execute":"get_stats"}`)
		var conns []byte
		if err == nil {
			conns, err = apiCall(*sock, `{"execute":"list_connections"}`)
		}
		if err != nil {
			fmt.Fprintf(stderr, "usernet %s: %v\n", name, err)
			return 1
		}
		if *asJSON && !top {
			fmt.Fprintf(stdout, "%s\n%s\n", stats, conns)
			return 0
		}
		var out strings.Builder
		if err := renderStatus(&out, stats, conns, &prev); err != nil {
			fmt.Fprintf(stderr, "usernet %s: %v\n", name, err)
			return 1
		}
		if top {
			io.WriteString(stdout, "\x1b[H\x1b[2J") // home, clear
		}
		io.WriteString(stdout, out.String())
		if !top {
			return 0
		}
		time.Sleep(*every)
	}
}

// apiCall sends one request and returns the "return" member of the reply.
func apiCall(path, req string) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		return nil, fmt.Errorf("reply %q: %w", b, err)
	}
	if reply.Error != nil {
		if strings.Contains(reply.Error.Desc, "unknown execute") {
			return nil, errors.New("this API socket has no statistics (slirp4netns, or an older usernet)")
		}
		return nil, errors.New(reply.Error.Desc)
	}
	return reply.Return, nil
}

// renderStatus prints the figures; with the previous sample in *prev it
// adds rates since then, and leaves this sample there.
func renderStatus(w io.Writer, statsJSON, connsJSON []byte, prev **apiStats) error {
	var st apiStats
	if err := json.Unmarshal(statsJSON, &st); err != nil {
		return fmt.Errorf("get_stats: %w", err)
	}
	defer func() { *prev = &st }()
	var conns []stack.FlowInfo
	if err := json.Unmarshal(connsJSON, &conns); err != nil {
		return fmt.Errorf("list_connections: %w", err)
	}
	fmt.Fprintf(w, "up %s   from the namespace %s (%d frames)   to it %s (%d frames)\n",
		time.Duration(st.Uptime*float64(time.Second)).Round(time.Second),
		human(st.Tap.RxBytes), st.Tap.RxFrames, human(st.Tap.TxBytes), st.Tap.TxFrames)
	if p := *prev; p != nil && st.Uptime > p.Uptime {
		dt := st.Uptime - p.Uptime
		rate := func(a, b uint64) float64 { return float64(a-b) / dt }
		fmt.Fprintf(w, "now: out %s/s  in %s/s   new flows/s: tcp %.0f  udp %.0f  icmp %.0f\n",
			human(uint64(rate(st.Tap.RxBytes, p.Tap.RxBytes))), human(uint64(rate(st.Tap.TxBytes, p.Tap.TxBytes))),
			rate(st.FlowsTotal["tcp"], p.FlowsTotal["tcp"]), rate(st.FlowsTotal["udp"], p.FlowsTotal["udp"]), rate(st.FlowsTotal["icmp"], p.FlowsTotal["icmp"]))
	}
	fmt.Fprintf(w, "flows now: tcp %d  udp %d  icmp %d   since start: tcp %d  udp %d  icmp %d\n",
		st.Flows["tcp"], st.Flows["udp"], st.Flows["icmp"], st.FlowsTotal["tcp"], st.FlowsTotal["udp"], st.FlowsTotal["icmp"])
	var refused []string
	for k, v := range st.Refused {
		if v > 0 {
			refused = append(refused, fmt.Sprintf("%s %d", k, v))
		}
	}
	sort.Strings(refused)
	if len(refused) > 0 {
		fmt.Fprintf(w, "refused: %s\n", strings.Join(refused, "  "))
	}
	if st.BadFrames > 0 || st.HostErrors > 0 {
		fmt.Fprintf(w, "bad frames %d   host errors %d\n", st.BadFrames, st.HostErrors)
	}
	for _, f := range st.Forwards {
		fmt.Fprintf(w, "forward %d %s: %d flows, in %s, out %s\n", f.ID, f.Rule, f.Flows, human(f.ToGuest), human(f.FromGuest))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tGUEST\tREMOTE\tHOST\tOUT\tIN\tAGE\tRULE")
	for _, c := range conns {
		rule := "-"
		if c.Rule != 0 {
			rule = fmt.Sprint(c.Rule)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Proto, c.Guest, c.Remote, c.Host,
			human(c.BytesOut), human(c.BytesIn), time.Duration(c.Age*float64(time.Second)).Round(time.Second), rule)
	}
	return tw.Flush()
}

// human prints a byte count in powers of 1024.
func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
