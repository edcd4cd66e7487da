package keystore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
)

// nested returns a Meta whose entry "a" nests objects (or arrays) so that
// the whole document is depth levels deep.
func nested(depth int, arrays bool) map[string]any {
	var v any = "leaf"
	for range depth - 1 {
		if arrays {
			v = []any{v}
		} else {
			v = map[string]any{"a": v}
		}
	}
	return map[string]any{"a": v}
}

func TestValidateMeta(t *testing.T) {
	type typed struct{ S string }
	cases := []struct {
		name string
		meta map[string]any
		ok   bool
	}{
		{"objects 100 deep", nested(100, false), true},
		{"objects 101 deep", nested(101, false), false},
		{"arrays 100 deep", nested(100, true), true},
		{"arrays 101 deep", nested(101, true), false},
		{"objects 10001 deep", nested(10001, false), false},
		{"arrays 20000 deep", nested(20000, true), false},
		{"nested keys invalid utf8", map[string]any{"n": map[string]any{"\xff": "one", "\xfe": "two"}}, false},
		{"string invalid utf8", map[string]any{"v": "bad\xffbyte"}, false},
		{"array string invalid utf8", map[string]any{"v": []any{"ok", []any{"\xc3\x28"}}}, false},
		{"typed map invalid utf8 key", map[string]any{"v": map[string]string{"\xed\xa0\x80": "x"}}, false},
		{"struct field invalid utf8", map[string]any{"v": typed{"\xff"}}, false},
		{"text marshaler of invalid utf8", map[string]any{"v": []json.Marshaler{json.RawMessage("\"\xff\"")}}, false},
		{"U+FFFD itself", map[string]any{"v": "\uFFFD", "\uFFFD": 1}, true},
		{"backslash-u text", map[string]any{"v": `\ufffd`, `\ufffd`: `\\ufffd"`}, true},
		{"NUL and escapes", map[string]any{"v": "a\x00\"\\<>&\u2028"}, true},
		{"2^53", map[string]any{"n": int64(1) << 53}, true},
		{"2^53+1", map[string]any{"n": int64(1)<<53 + 1}, false},
		{"nested 2^53+1", map[string]any{"n": []any{map[string]any{"x": uint64(1)<<53 + 1}}}, false},
		{"min int64", map[string]any{"n": int64(math.MinInt64)}, true},
		{"max uint64", map[string]any{"n": uint64(math.MaxUint64)}, false},
		{"0.1", map[string]any{"n": 0.1, "f": float32(0.1)}, true},
		{"negative zero", map[string]any{"n": math.Copysign(0, -1)}, true},
		{"largest and smallest float64", map[string]any{"n": []any{math.MaxFloat64, math.SmallestNonzeroFloat64}}, true},
		{"number 1.0", map[string]any{"n": json.Number("1.0")}, true},
		{"number 1e2", map[string]any{"n": json.Number("-1E+2")}, true},
		{"number 1e400", map[string]any{"n": json.Number("1e400")}, false},
		{"number 1e-400", map[string]any{"n": json.Number("1e-400")}, false},
		{"number 0e999999999999999999999", map[string]any{"n": json.Number("0e999999999999999999999")}, true},
		{"number 2^64", map[string]any{"n": json.Number("18446744073709551616")}, true},
		{"number 0.10000000000000000001", map[string]any{"n": json.Number("0.10000000000000000001")}, false},
		{"raw \\ufffd (the documented blind spot)", map[string]any{"v": json.RawMessage(`"\ufffd"`)}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := validateMeta("Meta", c.meta)
			if c.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				assertReadsBack(t, c.meta)
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != "Meta" {
				t.Fatalf("got %v, want a ValidationError naming Meta", err)
			}
		})
	}
}

// assertReadsBack checks that m, stored as the store stores it, reads back
// as the same JSON value: the same keys and strings byte for byte, and
// numbers that denote the same number.
func assertReadsBack(t *testing.T, m map[string]any) {
	t.Helper()
	stored, err := metaValue(m)
	if err != nil {
		t.Fatalf("validated Meta does not encode: %v", err)
	}
	var back jsonColumn[map[string]any]
	if err := back.Scan(stored); err != nil {
		t.Fatalf("validated Meta does not read back: %v", err)
	}
	if len(m) == 0 {
		if back.V != nil {
			t.Fatalf("empty Meta read back as %v", back.V)
		}
		return
	}
	if path, ok := sameJSON(m, back.V, "Meta"); !ok {
		t.Fatalf("validated Meta read back differently at %s: stored %s", path, stored)
	}
}

// sameJSON compares a value as given (of the types the tests build) with
// what decoding its JSON returned, and names the first difference. It is
// written apart from validateMeta's checks, with big.Rat for numbers.
func sameJSON(given, got any, path string) (string, bool) {
	switch g := given.(type) {
	case nil:
		return path, got == nil
	case bool:
		return path, got == g
	case string:
		return path, got == g
	case map[string]any:
		m, ok := got.(map[string]any)
		if !ok || len(m) != len(g) {
			return path, false
		}
		for k, v := range g {
			if p, ok := sameJSON(v, m[k], path+"."+strconv.Quote(k)); !ok {
				return p, false
			}
		}
		return path, true
	case []any:
		a, ok := got.([]any)
		if !ok || len(a) != len(g) {
			return path, false
		}
		for i := range g {
			if p, ok := sameJSON(g[i], a[i], path+"["+strconv.Itoa(i)+"]"); !ok {
				return p, false
			}
		}
		return path, true
	}
	f, ok := got.(float64)
	if !ok {
		return path, false
	}
	var lit string // the number as encoding/json writes it
	switch g := given.(type) {
	case int:
		lit = strconv.Itoa(g)
	case int64:
		lit = strconv.FormatInt(g, 10)
	case uint64:
		lit = strconv.FormatUint(g, 10)
	case float64:
		return path, f == g && math.Signbit(f) == math.Signbit(g)
	case float32:
		lit = strconv.FormatFloat(float64(g), 'g', -1, 32)
	case json.Number:
		lit = string(g)
	default:
		return path, false
	}
	return path, sameNumber(lit, f)
}

// sameNumber reports whether the decimal lit is exactly f, or exactly f's
// shortest decimal: the two ways a number can read back as it was written.
func sameNumber(lit string, f float64) bool {
	if f == 0 { // whatever the exponent, a zero is a zero; big.Rat would compute 10^exp
		mant, _, _ := strings.Cut(strings.ToLower(lit), "e")
		return strings.Trim(mant, "-0.") == ""
	}
	want, ok := new(big.Rat).SetString(lit)
	if !ok {
		return false
	}
	exact := new(big.Rat)
	exact.SetFloat64(f)
	short, _ := new(big.Rat).SetString(strconv.FormatFloat(f, 'g', -1, 64))
	return want.Cmp(exact) == 0 || short != nil && want.Cmp(short) == 0
}

// metaGen builds a Meta from fuzz bytes: nested maps and arrays, strings
// of raw bytes (invalid UTF-8 among them) as keys and values at any depth,
// numbers of every type a caller may put in, and nests of hundreds or
// thousands of levels.
type metaGen struct{ b []byte }

func (g *metaGen) byte() byte {
	if len(g.b) == 0 {
		return 0
	}
	c := g.b[0]
	g.b = g.b[1:]
	return c
}

func (g *metaGen) bytes(n int) []byte {
	n = min(n, len(g.b))
	out := g.b[:n]
	g.b = g.b[n:]
	return out
}

func (g *metaGen) uint64() uint64 {
	var buf [8]byte
	copy(buf[:], g.bytes(8))
	return binary.LittleEndian.Uint64(buf[:])
}

func (g *metaGen) str() string { return string(g.bytes(int(g.byte() % 12))) }

func (g *metaGen) object() map[string]any {
	m := map[string]any{}
	for n := g.byte() % 5; n > 0 && len(g.b) > 0; n-- {
		m[g.str()] = g.value()
	}
	return m
}

func (g *metaGen) value() any {
	switch g.byte() % 13 {
	case 0:
		return nil
	case 1:
		return g.byte()%2 == 0
	case 2, 3:
		return g.str()
	case 4:
		return int64(g.uint64())
	case 5:
		return g.uint64() >> (g.byte() % 64)
	case 6:
		return math.Float64frombits(g.uint64())
	case 7:
		return math.Float32frombits(uint32(g.uint64()))
	case 8:
		return json.Number(g.str())
	case 9:
		return g.object()
	case 10:
		a := []any{}
		for n := g.byte() % 5; n > 0 && len(g.b) > 0; n-- {
			a = append(a, g.value())
		}
		return a
	case 11:
		depth := int(g.byte())
		if g.byte()%4 == 0 {
			depth *= 64
		}
		return nested(max(depth, 1), g.byte()%2 == 0)
	default:
		return int64(int8(g.byte()))
	}
}

// checkMeta is the property both fuzz targets hold validateMeta to: a
// refusal is a ValidationError naming Meta, and an accepted Meta reads back
// exactly.
func checkMeta(t *testing.T, m map[string]any) {
	err := validateMeta("Meta", m)
	if err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "Meta" {
			t.Fatalf("got %v, want a ValidationError naming Meta", err)
		}
		return
	}
	assertReadsBack(t, m)
}

func FuzzMetaValue(f *testing.F) {
	f.Add([]byte{9, 2, 2, 1, 0xff, 2, 2, 'o', 'k'})
	f.Add([]byte{9, 1, 1, 'n', 4, 1, 0, 0, 0, 0, 0, 32, 0})
	f.Add([]byte{9, 1, 1, 'd', 11, 101, 1, 0})
	f.Add([]byte{10, 3, 8, 5, '1', 'e', '4', '0', '0', 7, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0xf0, 0x7f})
	f.Add([]byte("\x09\x04\x03k\xc3\x28\x02\x04\xed\xa0\x80x\x0a\x02\x02\x01\xfe\x0b\x63\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &metaGen{b: data}
		checkMeta(t, g.object())
	})
}

func FuzzMetaJSON(f *testing.F) {
	f.Add(`{"a":{"b":[1,2.5,-0,1e2,"x"]},"n":9007199254740993}`)
	f.Add(`{"n":1e400,"m":1E-400,"z":0.0e-5,"big":18446744073709551615}`)
	f.Add(`{"s":"\ufffd\u0000\"\\","t":true,"f":false,"z":null}`)
	f.Add(`{"d":` + strings.Repeat("[", 101) + strings.Repeat("]", 101) + `}`)
	f.Fuzz(func(t *testing.T, text string) {
		d := json.NewDecoder(strings.NewReader(text))
		d.UseNumber() // numbers stay the literals the input wrote
		var m map[string]any
		if d.Decode(&m) != nil {
			return
		}
		checkMeta(t, m)
	})
}
