package main

import (
	"math"
	"strconv"
	"strings"
)

// scale maps values to a fraction of an axis: 0 at its bottom, 1 at its top.
type scale struct {
	log      bool
	min, max float64 // the axis' ends
	ticks    []float64
}

// logRatio is the spread of positive values beyond which an axis is
// logarithmic: on a linear one the smaller bars would not be told apart.
const logRatio = 100

// newScale fits an axis to the positive values: on a linear axis from zero
// to the next multiple of a 1, 2 or 5 step at or above the largest; when
// they span more than logRatio, on a log axis from the power of ten at or
// below the smallest to the next 1, 2 or 5 times a power of ten.
func newScale(values []float64) scale {
	lo, hi := math.Inf(1), 0.0
	for _, v := range values {
		if v > 0 {
			lo, hi = min(lo, v), max(hi, v)
		}
	}
	if hi == 0 {
		return scale{max: 1, ticks: []float64{0, 1}}
	}
	if hi/lo > logRatio {
		first := math.Floor(math.Log10(lo))
		s := scale{log: true, min: math.Pow(10, first), max: niceStep(hi)}
		for e := first; math.Pow(10, e) <= s.max*1.0001; e++ {
			s.ticks = append(s.ticks, math.Pow(10, e))
		}
		return s
	}
	step := niceStep(hi / 5)
	s := scale{max: math.Ceil(hi/step) * step}
	for i := 0.0; i*step <= s.max*1.0001; i++ {
		s.ticks = append(s.ticks, i*step)
	}
	return s
}

// niceStep is the smallest of 1, 2 or 5 times a power of ten at or above x.
func niceStep(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x*0.9999 {
			return m * p
		}
	}
	return 10 * p
}

// at is v's position on the axis, clamped to [0, 1].
func (s scale) at(v float64) float64 {
	var f float64
	if s.log {
		if v <= 0 {
			return 0
		}
		f = math.Log10(v/s.min) / math.Log10(s.max/s.min)
	} else {
		f = (v - s.min) / (s.max - s.min)
	}
	return min(max(f, 0), 1)
}

// compact formats a value in at most about five characters: 4.7k, 727k,
// 1M, 12.4, 0.025.
func compact(v float64) string {
	var s string
	switch a := math.Abs(v); {
	case a >= 1e6:
		s = strconv.FormatFloat(v/1e6, 'f', 1, 64) + "M"
	case a >= 1e4:
		s = strconv.FormatFloat(v/1e3, 'f', 0, 64) + "k"
	case a >= 1e3:
		s = strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	case a >= 100:
		s = strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 1:
		s = strconv.FormatFloat(v, 'f', 1, 64)
	case a == 0:
		return "0"
	default:
		s = strconv.FormatFloat(v, 'g', 2, 64)
	}
	if i := strings.Index(s, ".0"); i >= 0 && (i+2 == len(s) || s[i+2] < '0' || s[i+2] > '9') {
		s = s[:i] + s[i+2:] // 2.0k -> 2k
	}
	return s
}
