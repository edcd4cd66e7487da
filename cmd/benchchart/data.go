package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// result is one object of bench.json: the medians of one shape in one
// benchmark.
type result struct {
	Benchmark string             `json:"benchmark"`
	Shape     string             `json:"shape"`
	Runs      int                `json:"runs"`
	Metrics   map[string]float64 `json:"metrics"`
}

// bar is what a chart shows of one result.
type bar struct {
	opsPerSec float64 // 1e9 / ns/op, as BENCHMARKS.md computes it: ns/op is wall time over calls
	p99ms     float64
	errors    float64 // errors/op: failed calls, which count in opsPerSec
	runs      int
}

// level is one concurrency of a chart and its bars in the chart's shape order.
type level struct {
	c    int    // goroutines; 0 when the benchmark name has no c=...
	bars []*bar // nil where the shape did not run at this concurrency
}

// chart is one scenario: a benchmark name without its c=... element.
type chart struct {
	name   string   // "BenchmarkCreateKey/scenario=new"
	shapes []string // in shapeCompare order
	levels []level  // by c, ascending
}

func decode(r io.Reader) ([]result, error) {
	var rs []result
	if err := json.NewDecoder(r).Decode(&rs); err != nil {
		return nil, err
	}
	for _, x := range rs {
		if x.Metrics["ns/op"] <= 0 {
			return nil, fmt.Errorf("%s %s: no ns/op", x.Benchmark, x.Shape)
		}
	}
	return rs, nil
}

// splitConcurrency takes the c=N element out of a benchmark name.
func splitConcurrency(name string) (scenario string, c int) {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		if v, ok := strings.CutPrefix(p, "c="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				return strings.Join(slices.Delete(parts, i, i+1), "/"), n
			}
		}
	}
	return name, 0
}

// group sorts results into charts, sorted by name.
func group(rs []result) []chart {
	type key struct {
		c     int
		shape string
	}
	bars := map[string]map[key]*bar{}
	shapes := map[string][]string{}
	for _, r := range rs {
		name, c := splitConcurrency(r.Benchmark)
		if bars[name] == nil {
			bars[name] = map[key]*bar{}
		}
		if !slices.Contains(shapes[name], r.Shape) {
			shapes[name] = append(shapes[name], r.Shape)
		}
		bars[name][key{c, r.Shape}] = &bar{
			opsPerSec: 1e9 / r.Metrics["ns/op"],
			p99ms:     r.Metrics["p99-ms"],
			errors:    r.Metrics["errors/op"],
			runs:      r.Runs,
		}
	}
	var charts []chart
	for name, byKey := range bars {
		ch := chart{name: name, shapes: slices.SortedFunc(slices.Values(shapes[name]), shapeCompare)}
		var cs []int
		for k := range byKey {
			if !slices.Contains(cs, k.c) {
				cs = append(cs, k.c)
			}
		}
		slices.Sort(cs)
		for _, c := range cs {
			l := level{c: c, bars: make([]*bar, len(ch.shapes))}
			for i, s := range ch.shapes {
				l.bars[i] = byKey[key{c, s}]
			}
			ch.levels = append(ch.levels, l)
		}
		charts = append(charts, ch)
	}
	slices.SortFunc(charts, func(a, b chart) int { return strings.Compare(a.name, b.name) })
	return charts
}

// Shape families, in the order a chart shows them: keystore's own shapes
// (named as cmd/benchtable recognises them), the code it is compared with,
// and the floors (the least the database can do for the same call).
const (
	familyOurs = iota
	familyOthers
	familyFloor
)

func family(shape string) int {
	switch {
	case strings.HasPrefix(shape, "keystore"), strings.HasPrefix(shape, "verify-"):
		return familyOurs
	case strings.HasPrefix(shape, "floor"), strings.HasPrefix(shape, "bare-"):
		return familyFloor
	}
	return familyOthers
}

// shapeCompare orders shapes by family, then by name.
func shapeCompare(a, b string) int {
	return cmp.Or(cmp.Compare(family(a), family(b)), strings.Compare(a, b))
}

// title is the chart's name for people: "CreateKey, scenario=new".
func (c chart) title() string {
	parts := strings.Split(strings.TrimPrefix(c.name, "Benchmark"), "/")
	return strings.Join(parts, ", ")
}

// fileName is "createkey-new.svg" for BenchmarkCreateKey/scenario=new.
func (c chart) fileName() string {
	var parts []string
	for _, p := range strings.Split(strings.TrimPrefix(c.name, "Benchmark"), "/") {
		if _, v, ok := strings.Cut(p, "="); ok {
			p = v
		}
		parts = append(parts, p)
	}
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, strings.Join(parts, "-"))
	return name + ".svg"
}
