// Command benchtable turns the output of repeated runs of keystore's
// benchmarks (go test -bench, any number of -count or whole reruns) into one
// Markdown report: per benchmark, the median of every metric over the runs,
// and for each group the throughput of keystore's shapes (named keystore...
// or verify-...) and of the floor-... baselines over every other shape's,
// as the median of the per-run ratios with their range.
// Medians of per-run ratios, because on a shared machine whole runs swing
// together.
//
//	go test -run '^$' -bench . -count 5 | go run ./cmd/benchtable > BENCHMARKS.md
//	go run ./cmd/benchtable -json < bench.txt > bench.json
//
// With -json it writes the medians as JSON instead: one object per
// benchmark and shape, {"benchmark", "shape", "runs", "metrics"}.
//
// A benchmark name "Group/a=1/shape=x" is grouped by everything but its
// shape=... element, so shapes measured under the same conditions are
// compared with each other and nothing else.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// run is one benchmark result line.
type run struct {
	group, shape string
	metrics      map[string]float64 // "ns/op", "p99-ms", ...
}

func main() {
	asJSON := flag.Bool("json", false, "write the medians as JSON instead of Markdown")
	flag.Parse()
	runs, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(runs) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark lines on standard input")
		os.Exit(1)
	}
	if *asJSON {
		if err := reportJSON(os.Stdout, runs); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		return
	}
	report(os.Stdout, runs)
}

// reportJSON writes the median of every metric per benchmark and shape.
func reportJSON(w io.Writer, runs []run) error {
	type result struct {
		Benchmark string             `json:"benchmark"`
		Shape     string             `json:"shape"`
		Runs      int                `json:"runs"`
		Metrics   map[string]float64 `json:"metrics"`
	}
	var out []result
	index := map[[2]string]int{}
	grouped := map[[2]string][]run{}
	for _, r := range runs {
		k := [2]string{r.group, r.shape}
		if _, ok := index[k]; !ok {
			index[k] = len(out)
			out = append(out, result{Benchmark: r.group, Shape: r.shape, Metrics: map[string]float64{}})
		}
		grouped[k] = append(grouped[k], r)
	}
	for k, i := range index {
		rs := grouped[k]
		out[i].Runs = len(rs)
		for _, r := range rs {
			for u := range r.metrics {
				out[i].Metrics[u] = median(metric(rs, u))
			}
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// parse reads benchmark lines: "BenchmarkX/a/shape=s-2  N  v1 unit1  v2 unit2 ...".
func parse(r io.Reader) ([]run, error) {
	var runs []run
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		group, shape := splitShape(name)
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: value %q: %w", f[0], f[i], err)
			}
			m[f[i+1]] = v
		}
		runs = append(runs, run{group: group, shape: shape, metrics: m})
	}
	return runs, sc.Err()
}

// splitShape takes the shape=... element out of a benchmark name.
func splitShape(name string) (group, shape string) {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		if s, ok := strings.CutPrefix(p, "shape="); ok {
			return strings.Join(slices.Delete(slices.Clone(parts), i, i+1), "/"), s
		}
	}
	return name, ""
}

func report(w io.Writer, runs []run) {
	fmt.Fprint(w, "# Benchmarks\n\nMade by cmd/benchtable from go test -bench output: for each benchmark, the median of every\n"+
		"metric over the runs, and the throughput of keystore's shapes (and floor-...) over each other shape as the median of\n"+
		"the per-run ratios (with their range). `make bench` writes it from five runs, the shapes in a rotated order.\n\n")
	var groups []string
	byGroup := map[string]map[string][]run{} // group -> shape -> runs, in input order
	var shapeOrder = map[string][]string{}
	for _, r := range runs {
		if byGroup[r.group] == nil {
			byGroup[r.group] = map[string][]run{}
			groups = append(groups, r.group)
		}
		if byGroup[r.group][r.shape] == nil {
			shapeOrder[r.group] = append(shapeOrder[r.group], r.shape)
		}
		byGroup[r.group][r.shape] = append(byGroup[r.group][r.shape], r)
	}
	for _, g := range groups {
		shapes := shapeOrder[g]
		units := metricUnits(byGroup[g])
		fmt.Fprintf(w, "### %s\n\n| shape | runs | ops/s |", g)
		for _, u := range units {
			fmt.Fprintf(w, " %s |", u)
		}
		fmt.Fprintf(w, "\n|---|---|---|%s\n", strings.Repeat("---|", len(units)))
		for _, s := range shapes {
			rs := byGroup[g][s]
			fmt.Fprintf(w, "| %s | %d | %.0f |", s, len(rs), 1e9/median(metric(rs, "ns/op")))
			for _, u := range units {
				fmt.Fprintf(w, " %s |", format(median(metric(rs, u))))
			}
			fmt.Fprintln(w)
		}
		ours, others := ratioTable(shapes)
		if len(others) > 0 {
			fmt.Fprintf(w, "\nThroughput of each row over each column (median of per-run ratios, range):\n\n| |")
			for _, b := range others {
				fmt.Fprintf(w, " %s |", b)
			}
			fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(others)))
			for _, a := range ours {
				fmt.Fprintf(w, "| %s |", a)
				for _, b := range others {
					if a == b {
						fmt.Fprint(w, " |")
					} else {
						fmt.Fprintf(w, " %s |", ratio(byGroup[g][a], byGroup[g][b]))
					}
				}
				fmt.Fprintln(w)
			}
		}
		fmt.Fprintln(w)
	}
}

// ratioTable returns the rows and the columns of a group's ratio table:
// rows are keystore's shapes (named keystore... or verify-...) and the
// floor-... baselines, columns every shape but keystore's. With none of
// keystore's, the first shape is the one row.
func ratioTable(shapes []string) (rows, cols []string) {
	for _, s := range shapes {
		ours := strings.HasPrefix(s, "keystore") || strings.HasPrefix(s, "verify-")
		if ours || strings.HasPrefix(s, "floor-") {
			rows = append(rows, s)
		}
		if !ours {
			cols = append(cols, s)
		}
	}
	if len(rows) == 0 && len(cols) > 0 {
		rows, cols = cols[:1:1], cols[1:]
	}
	return rows, cols
}

// metricUnits lists the metrics other than ns/op that the runs report.
func metricUnits(shapes map[string][]run) []string {
	var units []string
	for _, rs := range shapes {
		for _, r := range rs {
			for u := range r.metrics {
				if u != "ns/op" && !slices.Contains(units, u) {
					units = append(units, u)
				}
			}
		}
	}
	slices.Sort(units)
	return units
}

// ratio is a's throughput over b's for runs paired in input order.
func ratio(a, b []run) string {
	n := min(len(a), len(b))
	if n == 0 {
		return ""
	}
	rs := make([]float64, n)
	for i := range n {
		rs[i] = b[i].metrics["ns/op"] / a[i].metrics["ns/op"]
	}
	slices.Sort(rs)
	return fmt.Sprintf("%.2fx (%.2f–%.2f)", median(rs), rs[0], rs[n-1])
}

func metric(rs []run, unit string) []float64 {
	var out []float64
	for _, r := range rs {
		if v, ok := r.metrics[unit]; ok {
			out = append(out, v)
		}
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func format(v float64) string {
	if v == float64(int64(v)) {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}
