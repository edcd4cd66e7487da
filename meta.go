package keystore

import (
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits of a Meta (a key's or an identity's).
const (
	limitMetaEntries = 100      // top-level entries
	limitMetaBytes   = 64 << 10 // size of json.Marshal(Meta)
	// limitMetaDepth is the deepest nesting of objects and arrays, counting
	// Meta itself as 1: the deepest JSON document MySQL stores, and far
	// below the depth at which encoding/json refuses to read a document
	// back.
	limitMetaDepth = 100
)

// validateMeta checks that m reads back exactly as it was given: that its
// JSON encoding (what the store keeps) decodes to the same keys, strings
// and numbers. It returns a *ValidationError naming field when m has more
// than 100 top-level entries, cannot be marshaled (a channel, a NaN),
// encodes to more than 64 KiB, nests deeper than 100 levels, holds a key or
// string that is not valid UTF-8 at any depth (encoding/json would replace
// the bad bytes with U+FFFD, and two keys could become one), or holds a
// number that a float64, the type Meta's numbers are read back as, cannot
// hold exactly (an integer beyond 2^53 that is not a multiple of a power of
// two, say).
//
// The check reads the encoded JSON, so it covers values of any type, with
// one blind spot: a json.Marshaler (json.RawMessage included) that writes
// the escape \ufffd is refused, since that is what encoding/json writes in
// place of invalid UTF-8.
func validateMeta(field string, m map[string]any) error {
	if len(m) > limitMetaEntries {
		return invalid(field, "must have at most %d entries", limitMetaEntries)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return invalid(field, "must be marshalable to JSON: %v", err)
	}
	if len(b) > limitMetaBytes {
		return invalid(field, "must be at most %d bytes as JSON", limitMetaBytes)
	}
	if reason := unfaithfulJSON(b); reason != "" {
		return invalid(field, "%s", reason)
	}
	return nil
}

// unfaithfulJSON returns why the JSON document b, as json.Marshal wrote it,
// would not decode to what was encoded, or "" when it would. It walks b
// once, without decoding it.
func unfaithfulJSON(b []byte) string {
	if !utf8.Valid(b) {
		return "must be valid UTF-8 (a json.Marshaler wrote invalid bytes)"
	}
	depth := 0
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth++; depth > limitMetaDepth {
				return "must nest objects and arrays at most " + strconv.Itoa(limitMetaDepth) + " levels deep"
			}
		case c == '}' || c == ']':
			depth--
		case c == '"':
			end, replaced := stringEnd(b, i)
			if replaced {
				return "keys and strings must be valid UTF-8 at every depth"
			}
			i = end
		case c == '-' || '0' <= c && c <= '9':
			end := i + 1
			for end < len(b) && strings.IndexByte("+-.eE0123456789", b[end]) >= 0 {
				end++
			}
			if lit := string(b[i:end]); !exactFloat64(lit) {
				return "number " + lit + " cannot be read back exactly (Meta's numbers read back as float64)"
			}
			i = end - 1
		}
	}
	return ""
}

// stringEnd returns the index of the quote that closes the JSON string
// opening at b[start], and whether the string holds the escape \ufffd,
// which encoding/json writes for each byte of invalid UTF-8.
func stringEnd(b []byte, start int) (end int, replaced bool) {
	for i := start + 1; i < len(b); i++ {
		switch b[i] {
		case '"':
			return i, replaced
		case '\\':
			if i+5 < len(b) && string(b[i+1:i+6]) == "ufffd" {
				replaced = true
			}
			i++ // the escaped byte, so an escaped quote or backslash is skipped
		}
	}
	return len(b), replaced
}

// exactFloat64 reports whether the JSON number lit decodes to a float64
// that is exactly the number it wrote: either lit is that float64's
// shortest decimal, give or take zeros and notation (0.1 is; it reads back
// as 0.1), or lit is an integer the float64 holds exactly (-2^63 is;
// 2^53+1 is not, it reads back as 2^53).
func exactFloat64(lit string) bool {
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return false // out of a float64's range, or not a number
	}
	short := strconv.FormatFloat(f, 'g', -1, 64)
	if short == lit || sameDecimal(lit, short) {
		return true
	}
	n, ok := new(big.Int).SetString(lit, 10) // in range, so at most 309 digits
	if !ok {
		return false
	}
	_, acc := new(big.Float).SetInt(n).Float64()
	return acc == big.Exact
}

// sameDecimal reports whether two decimal literals (JSON numbers, or Go's
// 'g' format) denote the same number, by comparing their signs, their
// significant digits and the power of ten of the first of them.
func sameDecimal(a, b string) bool {
	na, da, ea, okA := decimalParts(a)
	nb, db, eb, okB := decimalParts(b)
	if !okA || !okB {
		return false
	}
	if da == "" || db == "" { // a zero: its sign and exponent do not matter
		return da == db
	}
	return na == nb && da == db && ea == eb
}

// decimalParts splits a decimal literal into its sign, its significant
// digits (no leading or trailing zeros; "" for zero, whatever its exponent)
// and the power of ten of the first of them.
func decimalParts(s string) (neg bool, digits string, exp int, ok bool) {
	if neg = strings.HasPrefix(s, "-"); neg {
		s = s[1:]
	}
	mant, expPart, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	trimmed := strings.TrimLeft(all, "0")
	if digits = strings.TrimRight(trimmed, "0"); digits == "" {
		return neg, "", 0, true
	}
	if hasExp {
		e, err := strconv.Atoi(strings.TrimPrefix(expPart, "+"))
		if err != nil {
			return false, "", 0, false
		}
		exp = e
	}
	// The first significant digit is at power len(intPart)-1, less the
	// leading zeros stripped.
	exp += len(intPart) - 1 - (len(all) - len(trimmed))
	return neg, digits, exp, true
}
