package main

// Pure helpers: latency percentiles over several clients, and /proc "Key: N kB" parsing.

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// mergeLatencies joins the transaction times of several concurrent clients into one sorted
// slice. Percentiles must come from the merged samples: the median of the clients' p99s is
// not the p99 of the run.
func mergeLatencies(per [][]time.Duration) []time.Duration {
	n := 0
	for _, l := range per {
		n += len(l)
	}
	all := make([]time.Duration, 0, n)
	for _, l := range per {
		all = append(all, l...)
	}
	slices.Sort(all)
	return all
}

// percentileUS is the p-th percentile of sorted samples in µs: the sample at index
// ⌊n·p/100⌋ (the rule the 1-client rr tool has always used, so old reports compare).
func percentileUS(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)) * p / 100)
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// parseClients parses a comma-separated list of client counts such as "1,4,16,64".
func parseClients(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			return nil, fmt.Errorf("client count %q: want an integer from 1 to 1024", f)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// kBField reads "Key:   N kB" from the text of a /proc file (status, smaps_rollup), in KiB.
func kBField(text, key string) (float64, error) {
	for _, l := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: %q is not \"N kB\"", key, strings.TrimSpace(v))
		}
		return strconv.ParseFloat(f[0], 64)
	}
	return 0, fmt.Errorf("no %s line", key)
}

// pssEstimateMiB estimates the PSS of one of n alike processes from its /proc/PID/status
// text, for processes whose smaps_rollup cannot be read: its anonymous and shmem pages are
// its own, its file pages (binary, libraries) are shared by the n.
func pssEstimateMiB(status string, n int) (float64, error) {
	var v [3]float64
	for i, k := range []string{"RssAnon", "RssShmem", "RssFile"} {
		var err error
		if v[i], err = kBField(status, k); err != nil {
			return 0, err
		}
	}
	return (v[0] + v[1] + v[2]/float64(max(n, 1))) / 1024, nil
}
