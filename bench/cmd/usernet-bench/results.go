package main

// The results file (results.json) that `drive` writes and `report` reads.

import (
	"slices"
)

// Results is everything one run of the harness measured.
type Results struct {
	Meta     Meta          `json:"meta"`
	Backends []BackendInfo `json:"backends"`
	Metrics  []*Metric     `json:"metrics"`
	// Loopback is iperf3 TCP on the host's own 127.0.0.1 in the same run, no backend: the
	// physical limit the bulk figures are compared with (Gbit/s). Nil in older results.
	Loopback *Series `json:"loopback,omitempty"`
	// Notes are odd things seen during the run (version quirks, MTUs actually applied).
	Notes []string `json:"notes"`
}

// Meta describes the machine and the run.
type Meta struct {
	Date        string  `json:"date"` // RFC 3339, UTC, when the run started
	Quick       bool    `json:"quick"`
	Runs        int     `json:"runs"`
	DurationS   float64 `json:"duration_s"`             // of each timed workload run
	Conns       int     `json:"conns"`                  // idle connections for mem_conns
	Clients     []int   `json:"clients,omitempty"`      // concurrent clients of rr/crr
	UDPFlows    int     `json:"udp_flows,omitempty"`    // flows of udp_flows
	Fleet       int     `json:"fleet,omitempty"`        // instances at once for mem_fleet
	CloseWaitS  float64 `json:"close_wait_s,omitempty"` // mem_closed: seconds after the close
	ElapsedS    float64 `json:"elapsed_s"`
	Nproc       int     `json:"nproc"`
	Kernel      string  `json:"kernel"`
	CPU         string  `json:"cpu"`
	MemTotal    string  `json:"mem_total"`
	LoadStart   string  `json:"loadavg_start"`
	LoadEnd     string  `json:"loadavg_end"`
	GoVersion   string  `json:"go_version"`
	Iperf3      string  `json:"iperf3"`
	Command     string  `json:"command"`     // how the harness was invoked
	NSEnter     string  `json:"nsenter"`     // what NS stands for in the commands
	Environment string  `json:"environment"` // the private network namespace, user
	Order       string  `json:"order"`       // how runs were interleaved
	Failures    int     `json:"failures"`    // failed samples, all metrics
	Provisional string  `json:"provisional"` // why the figures are provisional, if they are
}

// BackendInfo is one backend's version and the exact commands that started it.
type BackendInfo struct {
	Name    string            `json:"name"`
	Version string            `json:"version"`
	Argv    map[string]string `json:"argv"` // instance (e.g. "mtu65520") → command line
}

// Metric is one measured quantity, for every backend.
type Metric struct {
	ID      string             `json:"id"`
	Group   string             `json:"group"`
	Label   string             `json:"label"`
	Unit    string             `json:"unit"`
	Better  string             `json:"better"` // "higher" or "lower"
	Command string             `json:"command"`
	Results map[string]*Series `json:"results"` // backend name → series
}

// Series is the samples of one metric for one backend, or why there are none.
type Series struct {
	Samples []float64 `json:"samples"`
	Errors  []string  `json:"errors,omitempty"` // failed runs
	NA      string    `json:"na,omitempty"`     // no samples: why
	// Expected: the backend is known not to support the workload (not a failure).
	Expected bool    `json:"expected,omitempty"`
	Median   float64 `json:"median"`
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
}

func (s *Series) finish() {
	if len(s.Samples) == 0 {
		if s.NA == "" && len(s.Errors) > 0 {
			s.NA = s.Errors[0]
		}
		if s.NA == "" {
			s.NA = "not measured"
		}
		return
	}
	s.NA = ""
	v := slices.Clone(s.Samples)
	slices.Sort(v)
	s.Min, s.Max = v[0], v[len(v)-1]
	if n := len(v); n%2 == 1 {
		s.Median = v[n/2]
	} else {
		s.Median = (v[n/2-1] + v[n/2]) / 2
	}
}
