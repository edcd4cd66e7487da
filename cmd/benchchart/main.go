// Command benchchart draws the medians in bench.json (written by
// cmd/benchtable -json) as SVG charts: one file per benchmark scenario,
// throughput and p99 latency as bars grouped by concurrency, one bar per
// shape. It uses the standard library only, so that drawing charts adds
// nothing to the module's dependencies.
//
//	go run ./cmd/benchchart -in bench.json -out docs/charts
//
// Output is a function of the input alone (shapes, scenarios and
// concurrencies are sorted), so rerunning it on the same bench.json
// changes no file.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	in := flag.String("in", "bench.json", "medians written by cmd/benchtable -json")
	out := flag.String("out", "docs/charts", "directory for the SVG files")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchchart:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	results, err := decode(f)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	charts := group(results)
	if len(charts) == 0 {
		return fmt.Errorf("%s: no results", in)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, c := range charts {
		path := filepath.Join(out, c.fileName())
		if err := os.WriteFile(path, render(c), 0o644); err != nil {
			return err
		}
		fmt.Println(path)
	}
	return nil
}
