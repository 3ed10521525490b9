package main

// report: results.json → results.md (tables), results.csv (every sample), chart.svg.

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "", "results.json written by drive")
	out := fs.String("out", "", "directory for results.md, results.json, results.csv, chart.svg")
	provisional := fs.String("provisional", "", "if set, a warning that the figures are provisional, and why")
	strict := fs.Bool("strict", false, "exit 1 if any run failed or any workload was n/a unexpectedly (for --quick in CI)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || *out == "" {
		return errors.New("-in and -out are required")
	}
	b, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	if *provisional != "" {
		r.Meta.Provisional = *provisional
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(&r, "", "  ")
	files := map[string][]byte{
		"results.json": append(j, '\n'),
		"results.md":   []byte(markdown(&r)),
		"chart.svg":    []byte(chart(&r)),
	}
	var sb strings.Builder
	if err := writeCSV(&sb, &r); err != nil {
		return err
	}
	files["results.csv"] = []byte(sb.String())
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(*out, name), data, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "wrote %s/{results.md,results.json,results.csv,chart.svg}\n", *out)
	if *strict {
		if bad := problems(&r, false); len(bad) > 0 {
			return fmt.Errorf("-strict: problems:\n  %s", strings.Join(bad, "\n  "))
		}
	}
	return nil
}

func backendNames(r *Results) []string {
	var n []string
	for _, b := range r.Backends {
		n = append(n, b.Name)
	}
	return n
}

func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 0.1 || a == 0:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}

func cell(s *Series) string {
	if s == nil {
		return "—"
	}
	if s.NA != "" || len(s.Samples) == 0 {
		return "n/a¹"
	}
	if len(s.Samples) == 1 {
		return "**" + num(s.Median) + "**"
	}
	c := fmt.Sprintf("**%s** (%s–%s)", num(s.Median), num(s.Min), num(s.Max))
	if len(s.Errors) > 0 {
		c += fmt.Sprintf(" ²%d failed", len(s.Errors))
	}
	return c
}

func ratio(a, b *Series) string {
	if a == nil || b == nil || a.NA != "" || b.NA != "" || len(a.Samples) == 0 || len(b.Samples) == 0 || b.Median == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a.Median/b.Median)
}

func markdown(r *Results) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	names := backendNames(r)
	m := r.Meta
	p("# usernet benchmark results\n\n")
	if m.Provisional != "" {
		p("> **Provisional.** %s\n\n", m.Provisional)
	}
	if m.Quick {
		p("> **Smoke run (`--quick`)**: 1 short run of each workload, in reduced forms (%s). These figures only show that the harness works.\n\n", scale(m))
	}
	p("Made by [`bench/run.sh`](../../bench/README.md) on %s. Raw data: [results.json](results.json), "+
		"every sample: [results.csv](results.csv), chart: [chart.svg](chart.svg).\n\n", m.Date)
	p("Each figure is the **median** of %d runs (min–max in brackets) of %g s each, unless marked otherwise. "+
		"Ratios are usernet's median ÷ the other backend's median; the arrow says which way is better "+
		"(↑ higher, ↓ lower), so for ↓ rows a ratio below 1 favours usernet.\n\n", m.Runs, m.DurationS)
	if sc := scale(m); sc != "" {
		p("Scale of this run: %s.\n\n", sc)
	}

	p("## Machine and versions\n\n| | |\n|---|---|\n")
	p("| CPU | %s, %d cores (nproc) |\n| Kernel | %s |\n| Memory | %s |\n", m.CPU, m.Nproc, m.Kernel, memGiB(m.MemTotal))
	p("| Load average | %s at start, %s at end |\n| Go (harness) | %s |\n| iperf3 | %s |\n", m.LoadStart, m.LoadEnd, m.GoVersion, m.Iperf3)
	for _, b := range r.Backends {
		p("| %s | %s |\n", b.Name, b.Version)
	}
	if r.Loopback != nil {
		p("| Host loopback | TCP on 127.0.0.1 with no backend (iperf3, same run): %s Gbit/s |\n", cell(r.Loopback))
	}
	p("| Date | %s, run took %.0f s |\n\n", m.Date, m.ElapsedS)
	targetsTable(p, r)

	group := ""
	for _, met := range r.Metrics {
		if met.Group != group {
			group = met.Group
			p("\n## %s\n\n| workload | unit |", group)
			for _, n := range names {
				p(" %s |", n)
			}
			for _, n := range names[1:] {
				p(" %s/%s |", names[0], n)
			}
			p("\n|---|---|")
			for range len(names)*2 - 1 {
				p("---|")
			}
			p("\n")
		}
		arrow := "↑"
		if met.Better == "lower" {
			arrow = "↓"
		}
		p("| %s %s | %s |", met.Label, arrow, met.Unit)
		for _, n := range names {
			p(" %s |", cell(met.Results[n]))
		}
		for _, n := range names[1:] {
			p(" %s |", ratio(met.Results[names[0]], met.Results[n]))
		}
		p("\n")
	}

	loopbackTable(p, r)

	p("\n## n/a and failures\n\n¹ n/a: the backend could not do the workload; ² runs that failed (not in the median).\n\n")
	bad := problems(r, true)
	for _, l := range bad {
		p("- %s\n", l)
	}
	if len(bad) == 0 {
		p("None.\n")
	}

	p("\n## Notes\n\n")
	for _, n := range r.Notes {
		p("- %s\n", oneLine(n))
	}
	for _, n := range staticNotes {
		p("- %s\n", n)
	}

	p("\n## Exact commands\n\nThe harness: `%s`.\n\n%s.\n\nBackends (PID is the namespace holder's):\n\n```\n", m.Command, m.Environment)
	for _, b := range r.Backends {
		for _, k := range sortedKeys(b.Argv) {
			p("# %s, %s\n%s\n", b.Name, k, b.Argv[k])
		}
	}
	p("```\n\nWorkloads (`NS` = `%s`):\n\n| metric | command |\n|---|---|\n", m.NSEnter)
	for _, met := range r.Metrics {
		p("| `%s` | `%s` |\n", met.ID, strings.ReplaceAll(met.Command, "`", "'"))
	}
	if r.Loopback != nil {
		p("| host loopback | `iperf3 -c 127.0.0.1 -p PORT -t %g -J --connect-timeout 5000` against `iperf3 -s -B 127.0.0.1 -p PORT`, both in the run's network namespace, once per run before the backends' workloads |\n", m.DurationS)
	}
	p("\nOrder: %s.\n\n![chart](chart.svg)\n", m.Order)
	return w.String()
}

var staticNotes = []string{
	"Every backend runs as the same unprivileged user in a fresh `unshare --user --map-root-user --net --mount` namespace with the same addressing: tap0 10.0.2.100/24, default via 10.0.2.2, which each backend maps to the host's 127.0.0.1 (checked with a random token before any load; an instance that fails the check runs nothing).",
	"The whole run happens inside a private network namespace (`unshare --net --pid`), so no backend can reach another machine whatever it does. The host side of every workload is a server on 127.0.0.1 there.",
	"CPU is the backend process's own utime+stime (all threads) from /proc/PID/stat around each bulk run, divided by the bytes iperf3 received; it does not count the kernel work done on behalf of the namespace or the iperf3 processes.",
	"pasta forwards connections from the host's loopback to the namespace by splicing sockets in the kernel (pasta(1), \"Handling of local traffic\"); they do not cross its tap at all, so its port-forward figures measure a different path from slirp4netns's and usernet's. usernet called as pasta (usernet-pasta) does the like: it makes the connection again from inside the namespace.",
	"UDP \"delivered\" is iperf3's sending rate × the fraction of datagrams the server counted; loss is the server's count. Datagrams are 1400 bytes.",
	"Startup `launch → tap` is measured the same way for all backends: a poller inside the namespace, started before the backend, checks every 1 ms for the address and the default route. The ready fd figure is the time until the backend writes to `-r` (slirp4netns's command line only: pasta's has no ready fd).",
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", "\\|")
}

func sortedKeys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	for i := range k {
		for j := i + 1; j < len(k); j++ {
			if k[j] < k[i] {
				k[i], k[j] = k[j], k[i]
			}
		}
	}
	return k
}

func writeCSV(w *strings.Builder, r *Results) error {
	c := csv.NewWriter(w)
	c.Write([]string{"metric", "group", "label", "unit", "better", "backend", "run", "value", "note"})
	for _, met := range r.Metrics {
		for _, n := range backendNames(r) {
			s := met.Results[n]
			if s == nil {
				continue
			}
			row := func(run, v, note string) {
				c.Write([]string{met.ID, met.Group, met.Label, met.Unit, met.Better, n, run, v, note})
			}
			for i, v := range s.Samples {
				row(strconv.Itoa(i+1), strconv.FormatFloat(v, 'g', 6, 64), "")
			}
			for _, e := range s.Errors {
				row("", "", "failed: "+e)
			}
			if s.NA != "" {
				row("", "", "n/a: "+s.NA)
			}
		}
	}
	c.Flush()
	return c.Error()
}

// chart draws one small panel per metric: a bar per backend at the median, a line from min
// to max, the value written beside it.
func chart(r *Results) string {
	names := backendNames(r)
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b"}
	const (
		cols   = 3
		pw     = 330 // panel width
		labelW = 80
		barMax = pw - labelW - 70
	)
	ph2 := 40 + 22*len(names)
	rows := (len(r.Metrics) + cols - 1) / cols
	W, H := cols*pw+20, rows*ph2+60
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", W, H)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := fmt.Sprintf("%s — median of %d runs (bar), min–max (line); %s, %s, %d cores", strings.Join(names, " vs "), r.Meta.Runs, r.Meta.Date[:10], r.Meta.CPU, r.Meta.Nproc)
	if r.Meta.Provisional != "" || r.Meta.Quick {
		title += " — PROVISIONAL"
	}
	p(`<text x="10" y="22" font-size="13" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	for i, met := range r.Metrics {
		x0 := 10 + (i%cols)*pw
		y0 := 40 + (i/cols)*ph2
		arrow := "↑ higher is better"
		if met.Better == "lower" {
			arrow = "↓ lower is better"
		}
		lbl := met.Label
		if len([]rune(lbl)) > 52 {
			lbl = string([]rune(lbl)[:51]) + "…"
		}
		p(`<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x0, y0+12, html.EscapeString(lbl))
		p(`<text x="%d" y="%d" fill="#555">%s, %s</text>`+"\n", x0, y0+25, html.EscapeString(met.Unit), arrow)
		hi := 0.0
		for _, n := range names {
			if s := met.Results[n]; s != nil && s.NA == "" && len(s.Samples) > 0 {
				hi = math.Max(hi, s.Max)
			}
		}
		for k, n := range names {
			y := y0 + 32 + k*22
			p(`<text x="%d" y="%d">%s</text>`+"\n", x0, y+12, html.EscapeString(n))
			s := met.Results[n]
			if s == nil || s.NA != "" || len(s.Samples) == 0 || hi <= 0 {
				p(`<text x="%d" y="%d" fill="#999">n/a</text>`+"\n", x0+labelW, y+12)
				continue
			}
			scale := func(v float64) float64 { return float64(barMax) * v / hi }
			p(`<rect x="%d" y="%d" width="%.1f" height="14" fill="%s"/>`+"\n", x0+labelW, y+2, scale(s.Median), colors[k%len(colors)])
			if s.Max > s.Min {
				p(`<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="black"/>`+"\n", float64(x0+labelW)+scale(s.Min), float64(x0+labelW)+scale(s.Max), y+9, y+9)
			}
			p(`<text x="%.1f" y="%d">%s</text>`+"\n", float64(x0+labelW)+scale(math.Max(s.Median, s.Max))+4, y+13, num(s.Median))
		}
	}
	p("</svg>\n")
	return w.String()
}

// memGiB turns meminfo's "N kB" into GiB.
func memGiB(s string) string {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return s
	}
	kb, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s
	}
	return fmt.Sprintf("%.1f GiB", kb/(1<<20))
}

// problems lists failed runs and n/a workloads, one line per backend and reason (a dead
// instance makes many metrics n/a at once). Expected n/a are left out unless withExpected.
func problems(r *Results, withExpected bool) []string {
	type key struct{ backend, what string }
	var order []key
	ids := map[key][]string{}
	for _, met := range r.Metrics {
		for _, n := range backendNames(r) {
			s := met.Results[n]
			var k key
			switch {
			case s == nil:
				continue
			case s.NA != "" && (withExpected || !s.Expected):
				k = key{n, "n/a: " + oneLine(s.NA)}
			case s.NA == "" && len(s.Errors) > 0:
				k = key{n, fmt.Sprintf("%d failed run(s), first: %s", len(s.Errors), oneLine(s.Errors[0]))}
			default:
				continue
			}
			if ids[k] == nil {
				order = append(order, k)
			}
			ids[k] = append(ids[k], "`"+met.ID+"`")
		}
	}
	if lo := r.Loopback; lo != nil && (lo.NA != "" && len(lo.Samples) == 0 || len(lo.Errors) > 0) {
		what := "n/a: " + oneLine(lo.NA)
		if len(lo.Samples) > 0 {
			what = fmt.Sprintf("%d failed run(s), first: %s", len(lo.Errors), oneLine(lo.Errors[0]))
		}
		order = append(order, key{"host loopback", what})
		ids[order[len(order)-1]] = []string{"`loopback`"}
	}
	var out []string
	for _, k := range order {
		out = append(out, fmt.Sprintf("%s, %s: %s", k.backend, strings.Join(ids[k], ", "), k.what))
	}
	return out
}

// scale says how big the workloads that grow with load were (the --quick forms are smaller).
func scale(m Meta) string {
	var parts []string
	if len(m.Clients) > 0 {
		var c []string
		for _, n := range m.Clients {
			c = append(c, strconv.Itoa(n))
		}
		parts = append(parts, "request/response with "+strings.Join(c, ", ")+" concurrent clients")
	}
	if m.UDPFlows > 0 {
		parts = append(parts, fmt.Sprintf("%d UDP flows", m.UDPFlows))
	}
	if m.Conns > 0 && m.CloseWaitS > 0 {
		parts = append(parts, fmt.Sprintf("%d idle connections, RSS again %g s after they closed", m.Conns, m.CloseWaitS))
	}
	if m.Fleet > 0 {
		parts = append(parts, fmt.Sprintf("%d instances at once", m.Fleet))
	}
	return strings.Join(parts, "; ")
}

// loopbackTable writes every TCP bulk figure as a fraction of the host's own loopback.
func loopbackTable(p func(string, ...any), r *Results) {
	lo := r.Loopback
	if lo == nil || lo.NA != "" || len(lo.Samples) == 0 || lo.Median <= 0 {
		return
	}
	names := backendNames(r)
	p("\n## TCP bulk ÷ host loopback\n\nEach backend's median ÷ the median of iperf3 on the host's own 127.0.0.1 in the same run (%s Gbit/s): the share of the physical limit.\n\n| workload |", num(lo.Median))
	for _, n := range names {
		p(" %s |", n)
	}
	p("\n|---|")
	for range names {
		p("---|")
	}
	p("\n")
	for _, met := range r.Metrics {
		if met.Group != "TCP bulk" || met.Unit != "Gbit/s" {
			continue
		}
		p("| %s |", met.Label)
		for _, n := range names {
			p(" %s |", ofLoopback(met.Results[n], lo))
		}
		p("\n")
	}
}

// ofLoopback is a bulk series' median as a fraction of the loopback's, or — without one.
func ofLoopback(s, lo *Series) string {
	if s == nil || s.NA != "" || len(s.Samples) == 0 || lo == nil || lo.Median <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", s.Median/lo.Median)
}
