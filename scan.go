package keystore

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
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
