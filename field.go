package keystore

// Field is a tri-state value for partial updates. The zero value leaves the
// stored value alone, [Set] replaces it and [Null] clears it.
type Field[T any] struct {
	value T
	state fieldState
}

type fieldState uint8

const (
	fieldUnset fieldState = iota
	fieldSet
	fieldNull
)

// Set returns a Field that sets the stored value to v.
func Set[T any](v T) Field[T] { return Field[T]{value: v, state: fieldSet} }

// Null returns a Field that clears the stored value.
func Null[T any]() Field[T] { return Field[T]{state: fieldNull} }

// Present reports whether the field asks for a change (Set or Null).
func (f Field[T]) Present() bool { return f.state != fieldUnset }

// IsNull reports whether the field was made by [Null].
func (f Field[T]) IsNull() bool { return f.state == fieldNull }

// Value returns the value given to [Set] and true, or the zero value and
// false when the field is unset or null.
func (f Field[T]) Value() (T, bool) { return f.value, f.state == fieldSet }

func valueOrZero[T any](f Field[T]) T {
	v, _ := f.Value()
	return v
}
