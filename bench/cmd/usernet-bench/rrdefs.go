package main

// The request/response workloads and their metrics, for every number of concurrent clients.

import "fmt"

// rrName is a request/response workload's name: rr, crr, rr_fwd, crr_fwd with one client
// (the names of older reports), rr_c16, crr_fwd_c16, ... with more. Its metrics are the name
// with _tps, _p50 and _p99.
func rrName(mode string, fwd bool, clients int) string {
	n := mode
	if fwd {
		n += "_fwd"
	}
	if clients > 1 {
		n += fmt.Sprintf("_c%d", clients)
	}
	return n
}

// rrMetrics defines the metrics of every rr/crr workload: one group per client count.
func rrMetrics(clients []int, dur string) []Metric {
	var defs []Metric
	for _, c := range clients {
		group, who, flag := "TCP request/response", "", ""
		if c > 1 {
			group = fmt.Sprintf("TCP request/response, %d clients at once", c)
			who = fmt.Sprintf("%d clients, ", c)
			flag = fmt.Sprintf(" -c %d", c)
		}
		echo := "usernet-bench echo -addr 0.0.0.0:5202"
		for _, fwd := range []bool{false, true} {
			for _, mode := range []string{"rr", "crr"} {
				name := rrName(mode, fwd, c)
				var label, unit, cmd, lat, latTail string
				if mode == "rr" {
					label, unit, lat = "1-byte ping-pong on one connection", "trans/s", "ping-pong latency"
					if c > 1 {
						label = "1-byte ping-pong, one connection per client"
					}
				} else {
					label, unit, lat = "connect + 1-byte request + response + close", "conn/s", "connection transaction latency"
				}
				if c > 1 && mode == "rr" {
					label += ","
				}
				if fwd {
					label += " host→ns through a port forward"
					cmd = fmt.Sprintf("usernet-bench rr -mode %s%s -addr 127.0.0.1:FWD2 -d %ss", mode, flag, dur)
					if mode == "rr" {
						cmd += " (forward 127.0.0.1:FWD2 → namespace port 5202, where `" + nsCmd + " " + echo + "` listens)"
					} else {
						cmd += " (the same forward)"
					}
					latTail = ", through a port forward"
				} else {
					if mode == "crr" {
						label += ","
					}
					label += " ns→host"
					cmd = fmt.Sprintf("%s usernet-bench rr -mode %s%s -addr 10.0.2.2:PORT -d %ss", nsCmd, mode, flag, dur)
				}
				if c > 1 {
					label = who + label
					lat = who + lat
					latTail += " (all clients' transactions)"
				}
				defs = append(defs,
					Metric{ID: name + "_tps", Group: group, Label: label, Unit: unit, Better: "higher", Command: cmd},
					Metric{ID: name + "_p50", Group: group, Label: lat + " p50" + latTail, Unit: "µs", Better: "lower", Command: "(same run)"},
					Metric{ID: name + "_p99", Group: group, Label: lat + " p99" + latTail, Unit: "µs", Better: "lower", Command: "(same run)"})
			}
		}
	}
	return defs
}
