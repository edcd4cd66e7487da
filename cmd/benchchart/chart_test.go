package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// sample is bench.json's form: two scenarios, a shape missing at one
// concurrency, and results out of order.
const sample = `[
 {"benchmark": "BenchmarkCreateKey/scenario=new/c=16", "shape": "seed-retry3", "runs": 5, "metrics": {"ns/op": 400000, "p99-ms": 14, "errors/op": 0}},
 {"benchmark": "BenchmarkCreateKey/scenario=new/c=1", "shape": "keystore", "runs": 5, "metrics": {"ns/op": 800000, "p99-ms": 3.5}},
 {"benchmark": "BenchmarkCreateKey/scenario=new/c=16", "shape": "floor", "runs": 5, "metrics": {"ns/op": 200000, "p99-ms": 9}},
 {"benchmark": "BenchmarkCreateKey/scenario=new/c=16", "shape": "keystore", "runs": 5, "metrics": {"ns/op": 250000, "p99-ms": 12}},
 {"benchmark": "BenchmarkCreateKey/scenario=new/c=1", "shape": "seed-retry3", "runs": 5, "metrics": {"ns/op": 1000000, "p99-ms": 4}},
 {"benchmark": "BenchmarkUpdateKeyLink/c=64", "shape": "seed-naive", "runs": 3, "metrics": {"ns/op": 300000, "p99-ms": 33, "errors/op": 0.82}},
 {"benchmark": "BenchmarkUpdateKeyLink/c=64", "shape": "keystore & co", "runs": 5, "metrics": {"ns/op": 600000, "p99-ms": 60}}
]`

func charts(t *testing.T, input string) []chart {
	t.Helper()
	rs, err := decode(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	return group(rs)
}

func TestGroup(t *testing.T) {
	cs := charts(t, sample)
	if len(cs) != 2 || cs[0].name != "BenchmarkCreateKey/scenario=new" || cs[1].name != "BenchmarkUpdateKeyLink" {
		t.Fatalf("charts %v", cs)
	}
	c := cs[0]
	if want := []string{"keystore", "seed-retry3", "floor"}; !slices.Equal(c.shapes, want) {
		t.Errorf("shapes %v, want %v (ours, others, floors)", c.shapes, want)
	}
	if len(c.levels) != 2 || c.levels[0].c != 1 || c.levels[1].c != 16 {
		t.Fatalf("levels %+v", c.levels)
	}
	if c.levels[0].bars[2] != nil {
		t.Error("floor did not run at c=1 but has a bar")
	}
	// ns/op is wall time over calls, so throughput is its inverse whatever the concurrency.
	if got := c.levels[1].bars[0].opsPerSec; got != 4000 {
		t.Errorf("keystore at c=16: %v ops/s, want 4000", got)
	}
	if got := c.fileName(); got != "createkey-new.svg" {
		t.Errorf("file name %q", got)
	}
	if got := c.title(); got != "CreateKey, scenario=new" {
		t.Errorf("title %q", got)
	}
}

func TestDecodeRejectsMissingNsPerOp(t *testing.T) {
	_, err := decode(strings.NewReader(`[{"benchmark": "BenchmarkX/c=1", "shape": "a", "runs": 1, "metrics": {"p99-ms": 1}}]`))
	if err == nil {
		t.Fatal("no error for a result without ns/op")
	}
}

func TestRender(t *testing.T) {
	for _, c := range charts(t, sample) {
		out := render(c)
		// Well-formed XML: decode every token.
		d := xml.NewDecoder(bytes.NewReader(out))
		var texts []string
		for {
			tok, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if cd, ok := tok.(xml.CharData); ok {
				texts = append(texts, string(cd))
			}
		}
		for _, s := range c.shapes {
			if !slices.Contains(texts, s) {
				t.Errorf("%s: no legend entry %q", c.name, s)
			}
		}
		if c.anyErrors() && !slices.Contains(texts, "82% failed") {
			t.Errorf("%s: failed calls not shown", c.name)
		}
	}
}

// Output depends on the results, not on their order in the file.
func TestDeterministic(t *testing.T) {
	lines := strings.Split(strings.Trim(sample, "[]\n"), "\n")
	reversed := slices.Clone(lines)
	slices.Reverse(reversed)
	for i := range reversed {
		reversed[i] = strings.TrimSuffix(reversed[i], ",")
	}
	a, b := charts(t, sample), charts(t, "["+strings.Join(reversed, ",\n")+"]")
	if len(a) != len(b) {
		t.Fatal("different charts")
	}
	for i := range a {
		if !bytes.Equal(render(a[i]), render(b[i])) {
			t.Errorf("%s: output depends on input order", a[i].name)
		}
	}
}

func TestLinearScale(t *testing.T) {
	s := newScale([]float64{860, 4697, 1172})
	if s.log || s.min != 0 || s.max != 5000 {
		t.Fatalf("scale %+v", s)
	}
	if want := []float64{0, 1000, 2000, 3000, 4000, 5000}; !slices.Equal(s.ticks, want) {
		t.Errorf("ticks %v, want %v", s.ticks, want)
	}
	if s.at(0) != 0 || s.at(5000) != 1 || s.at(2500) != 0.5 || s.at(9999) != 1 {
		t.Error("positions")
	}
}

func TestLogScale(t *testing.T) {
	s := newScale([]float64{1552, 1003915, 9442})
	if !s.log || s.min != 1000 || s.max != 2e6 {
		t.Fatalf("scale %+v", s)
	}
	if want := []float64{1e3, 1e4, 1e5, 1e6}; !slices.Equal(s.ticks, want) {
		t.Errorf("ticks %v, want %v", s.ticks, want)
	}
	if got := s.at(1e4); math.Abs(got-1/math.Log10(2000)) > 1e-9 {
		t.Errorf("at(1e4) = %v", got)
	}
}

func TestNiceStep(t *testing.T) {
	for x, want := range map[float64]float64{0.9: 1, 1: 1, 1.1: 2, 3: 5, 7: 10, 929.6: 1000, 0.03: 0.05} {
		if got := niceStep(x); math.Abs(got-want) > 1e-12 {
			t.Errorf("niceStep(%v) = %v, want %v", x, got, want)
		}
	}
}

func TestCompact(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 0.02478: "0.025", 3.584: "3.6", 12: "12", 860: "860",
		2000: "2k", 4697: "4.7k", 23953: "24k", 726744: "727k", 1003915: "1M", 2.5e6: "2.5M"} {
		if got := compact(v); got != want {
			t.Errorf("compact(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestRunWritesOneFilePerScenario(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.json")
	if err := os.WriteFile(in, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "charts")
	if err := run(in, out); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(out, "*.svg"))
	for i := range files {
		files[i] = filepath.Base(files[i])
	}
	if want := []string{"createkey-new.svg", "updatekeylink.svg"}; !slices.Equal(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}
}
