package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strings"
)

// Layout, in pixels. The charts are drawn on a white background in dark
// ink so that they read the same in GitHub's light and dark themes.
const (
	width      = 960
	marginL    = 80
	marginR    = 24
	plotH      = 230 // a panel's plot area, headroom for value labels included
	headroom   = 30  // of plotH, above the largest tick
	panelGap   = 78  // below a plot: concurrency labels, axis title, next panel's title
	charW      = 6.6 // average width of a character at 12px, for laying out the legend
	fontFamily = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
)

// Colours by family: blues for keystore, warm colours for the code it is
// compared with, greys for the floors; the same shape gets the same colour
// in every chart where its family has the same members before it.
var palette = map[int][]string{
	familyOurs:   {"#1f5fbf", "#17a2b8", "#6a51c8", "#7fb3ea"},
	familyOthers: {"#e8590c", "#f0a202", "#c2255c", "#8d5a2b", "#e599a5"},
	familyFloor:  {"#495057", "#a0a7ae", "#6c757d", "#ced4da"},
}

// colours assigns each shape of a chart its colour.
func colours(shapes []string) []string {
	used := map[int]int{}
	out := make([]string, len(shapes))
	for i, s := range shapes {
		f := family(s)
		p := palette[f]
		out[i] = p[used[f]%len(p)]
		used[f]++
	}
	return out
}

// render draws a chart: a title, a legend, then a throughput panel and a
// p99 panel, each with bars grouped by concurrency.
func render(c chart) []byte {
	var b bytes.Buffer
	col := colours(c.shapes)

	// Legend items flow left to right and wrap.
	type item struct{ x, y float64 }
	items := make([]item, len(c.shapes))
	x, y := float64(marginL), 74.0
	for i, s := range c.shapes {
		w := 18 + charW*float64(len(s)) + 22
		if x+w > width-marginR && x > marginL {
			x, y = marginL, y+20
		}
		items[i] = item{x, y}
		x += w
	}
	top := y + 44
	height := top + 2*(plotH+panelGap) + 10

	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" role="img" font-family="%s">`+"\n",
		width, height, width, height, fontFamily)
	fmt.Fprintf(&b, "<title>%s</title>\n", esc(c.title()+": throughput and p99 latency by concurrency"))
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="30" font-size="18" font-weight="bold" fill="#1a1a1a">%s</text>`+"\n", marginL, esc(c.title()))
	fmt.Fprintf(&b, `<text x="%d" y="50" font-size="12" fill="#444444">%s</text>`+"\n", marginL, esc(c.subtitle()))
	for i, s := range c.shapes {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="12" fill="%s"/>`, items[i].x, items[i].y-10, col[i])
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="12" fill="#1a1a1a">%s</text>`+"\n", items[i].x+18, items[i].y, esc(s))
	}

	panel(&b, c, col, top, "Throughput, higher is better", "ops/s", func(v *bar) float64 { return v.opsPerSec }, true)
	panel(&b, c, col, top+plotH+panelGap, "p99 latency of one call, lower is better", "ms", func(v *bar) float64 { return v.p99ms }, false)

	note := "ops/s: calls completed per second of wall time, all goroutines together (1e9 / ns/op)."
	if c.anyErrors() {
		note += " Red: share of calls that failed; failed calls count in ops/s."
	}
	fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-size="11" fill="#444444">%s</text>`+"\n", marginL, height-12, esc(note))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// panel draws one metric of every bar of c, its top edge at top.
func panel(b *bytes.Buffer, c chart, col []string, top float64, title, unit string, value func(*bar) float64, showErrors bool) {
	var values []float64
	for _, l := range c.levels {
		for _, v := range l.bars {
			if v != nil {
				values = append(values, value(v))
			}
		}
	}
	s := newScale(values)
	plotW := float64(width - marginL - marginR)
	bottom := top + plotH
	yOf := func(v float64) float64 { return bottom - s.at(v)*(plotH-headroom) }

	fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="14" font-weight="bold" fill="#1a1a1a">%s</text>`+"\n", marginL, top-6, esc(title))
	axis := unit
	if s.log {
		axis += " (log scale)"
	}
	fmt.Fprintf(b, `<text transform="translate(%d %.1f) rotate(-90)" text-anchor="middle" font-size="12" fill="#1a1a1a">%s</text>`+"\n",
		22, bottom-(plotH-headroom)/2, esc(axis))
	for _, t := range s.ticks {
		y := yOf(t)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e3e3e3"/>`, marginL, y, marginL+plotW, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end" font-size="11" fill="#444444">%s</text>`+"\n", marginL-6, y+4, esc(compact(t)))
	}

	groupW := plotW / float64(len(c.levels))
	for g, l := range c.levels {
		var present []int
		for i, v := range l.bars {
			if v != nil {
				present = append(present, i)
			}
		}
		slot := groupW * 0.86 / float64(len(present))
		bw := min(slot*0.84, 56)
		x0 := marginL + float64(g)*groupW + (groupW-slot*float64(len(present)))/2
		for j, i := range present {
			v := l.bars[i]
			x := x0 + float64(j)*slot + (slot-bw)/2
			y := yOf(value(v))
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`,
				x, y, bw, bottom-y, col[i], esc(fmt.Sprintf("%s, c=%d: %s %s", c.shapes[i], l.c, compact(value(v)), unit)))
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" fill="#1a1a1a">%s</text>`+"\n", x+bw/2, y-4, esc(compact(value(v))))
			if showErrors && v.errors >= 0.0005 {
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" font-weight="bold" fill="#c92a2a">%s</text>`+"\n",
					x+bw/2, y-16, esc(percent(v.errors)+" failed"))
			}
		}
		label := fmt.Sprintf("c=%d", l.c)
		if l.c == 0 {
			label = ""
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="12" fill="#1a1a1a">%s</text>`+"\n", marginL+(float64(g)+0.5)*groupW, bottom+18, esc(label))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888888"/>`+"\n", marginL, bottom, marginL+plotW, bottom)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="12" fill="#444444">concurrent callers (goroutines)</text>`+"\n", marginL+plotW/2, bottom+36)
}

// subtitle says where the numbers come from.
func (c chart) subtitle() string {
	lo, hi := 0, 0
	for _, l := range c.levels {
		for _, v := range l.bars {
			if v != nil {
				if lo == 0 || v.runs < lo {
					lo = v.runs
				}
				hi = max(hi, v.runs)
			}
		}
	}
	runs := fmt.Sprint(hi)
	if lo != hi {
		runs = fmt.Sprintf("%d–%d", lo, hi)
	}
	return fmt.Sprintf("Medians of %s runs of make bench (bench.json), the shapes side by side on one server.", runs)
}

func (c chart) anyErrors() bool {
	for _, l := range c.levels {
		for _, v := range l.bars {
			if v != nil && v.errors >= 0.0005 {
				return true
			}
		}
	}
	return false
}

// percent is 0.746 as "75%" and 0.035 as "3.5%".
func percent(f float64) string {
	if f < 0.1 {
		return strings.TrimSuffix(fmt.Sprintf("%.1f", f*100), ".0") + "%"
	}
	return fmt.Sprintf("%.0f%%", f*100)
}

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
