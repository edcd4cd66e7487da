package keystore

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// dbTime scans a DATETIME column with or without parseTime in the DSN. The
// store writes UTC wall-clock times, so the wall clock read back is UTC
// whatever loc the driver was told.
type dbTime struct {
	Time  time.Time
	Valid bool
}

const dbTimeLayout = "2006-01-02 15:04:05.999999"

func (t *dbTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*t = dbTime{}
		return nil
	case time.Time:
		*t = dbTime{time.Date(v.Year(), v.Month(), v.Day(), v.Hour(), v.Minute(), v.Second(), v.Nanosecond(), time.UTC), true}
		return nil
	case []byte:
		return t.parse(string(v))
	case string:
		return t.parse(v)
	}
	return fmt.Errorf("keystore: cannot scan %T into a time", src)
}

func (t *dbTime) parse(s string) error {
	v, err := time.ParseInLocation(dbTimeLayout, s, time.UTC)
	if err != nil {
		return fmt.Errorf("keystore: parse time %q: %w", s, err)
	}
	*t = dbTime{v, true}
	return nil
}

func (t dbTime) ptr() *time.Time {
	if !t.Valid {
		return nil
	}
	v := t.Time
	return &v
}

// utc formats t as the UTC wall clock the schema stores, so the driver's loc
// setting cannot shift it.
func utc(t time.Time) string { return t.UTC().Format(dbTimeLayout) }

// nullableUTC is utc for an optional time.
func nullableUTC(t *time.Time) driver.Value {
	if t == nil {
		return nil
	}
	return utc(*t)
}

// jsonColumn scans a JSON text column into a value of type T.
type jsonColumn[T any] struct{ V T }

func (j *jsonColumn[T]) Scan(src any) error {
	var zero T
	j.V = zero // a row scanned again must not keep, or merge into, the last value
	var b []byte
	switch v := src.(type) {
	case nil:
		return nil
	case []byte:
		b = v
	case string:
		b = []byte(v)
	default:
		return fmt.Errorf("keystore: cannot scan %T as JSON", src)
	}
	return json.Unmarshal(b, &j.V)
}

// metaValue encodes Meta for its column; nil or empty is NULL.
func metaValue(m map[string]any) (driver.Value, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, invalid("Meta", "cannot be encoded as JSON: %v", err)
	}
	return string(b), nil
}

// jsonList encodes a set of strings for a JSON column; empty is NULL.
func jsonList(values []string) any {
	if len(values) == 0 {
		return nil
	}
	b, _ := json.Marshal(values) // strings always marshal
	return string(b)
}

// ratelimitsValue encodes ratelimits for a JSON column; empty is NULL.
// Durations are stored in whole milliseconds.
func ratelimitsValue(rls []Ratelimit) any {
	if len(rls) == 0 {
		return nil
	}
	rows := make([]ratelimitJSON, len(rls))
	for i, rl := range rls {
		rows[i] = ratelimitJSON{Name: rl.Name, Limit: rl.Limit, Millis: rl.Duration.Milliseconds()}
		if rl.AutoApply {
			rows[i].AutoApply = 1
		}
	}
	b, _ := json.Marshal(rows) // plain values always marshal
	return string(b)
}

// ratelimitsFromJSON decodes stored ratelimits, sorted by name.
func ratelimitsFromJSON(rows []ratelimitJSON) []Ratelimit {
	var out []Ratelimit
	for _, rl := range rows {
		out = append(out, Ratelimit{Name: rl.Name, Limit: rl.Limit,
			Duration: time.Duration(rl.Millis) * time.Millisecond, AutoApply: rl.AutoApply != 0})
	}
	slices.SortFunc(out, func(a, b Ratelimit) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ratelimitJSON is how a ratelimit is stored in a JSON column.
type ratelimitJSON struct {
	Name      string `json:"n"`
	Limit     int64  `json:"l"`
	Millis    int64  `json:"d"`
	AutoApply int    `json:"a"`
}

// column is one column of a row and its value.
type column struct {
	name  string
	value any
}

// columns is a row, or part of one, each value beside its column's name, so
// that a column added to a table is added to the one list that writes it.
type columns []column

// names returns the column names, comma-separated.
func (cs columns) names() string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// values returns the values, in the order of names.
func (cs columns) values() []any {
	values := make([]any, len(cs))
	for i, c := range cs {
		values[i] = c.value
	}
	return values
}

// assignments returns "name = ?" for each column, for an UPDATE's SET list
// whose arguments are values().
func (cs columns) assignments() []string {
	sets := make([]string, len(cs))
	for i, c := range cs {
		sets[i] = c.name + " = ?"
	}
	return sets
}

// set gives the columns of cs named in from the values they have there.
func (cs columns) set(from columns) {
	for _, f := range from {
		for i := range cs {
			if cs[i].name == f.name {
				cs[i].value = f.value
			}
		}
	}
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
