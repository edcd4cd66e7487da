package keystore

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: the key, identity or role does not exist in the workspace.
	ErrNotFound = errors.New("keystore: not found")
	// ErrInvalidInput: a request failed validation; nothing was written.
	// The error is a *ValidationError naming the field.
	ErrInvalidInput = errors.New("keystore: invalid input")
	// ErrRetriesExhausted: a retryable error persisted through every
	// attempt. The error is a *RetryError that wraps the last cause.
	ErrRetriesExhausted = errors.New("keystore: retries exhausted")
	// ErrAmbiguousCommit: COMMIT was sent but its outcome is unknown (the
	// connection failed before the reply). The transaction may or may not
	// have been applied; it is never retried.
	ErrAmbiguousCommit = errors.New("keystore: commit outcome unknown")
	// ErrUnsupportedSetting: the connection's settings would break what
	// keystore promises (autocommit off, or a DSN that names no database);
	// nothing was written. The message names the setting and the fix.
	ErrUnsupportedSetting = errors.New("keystore: unsupported connection setting")
	// ErrTooManyUnknownKeys: VerifyKey did not look the key up, because
	// the Store's verification cache neither holds nor knows it, and the
	// Store has read as many such keys this second as it will (a flood of
	// made-up keys). Nothing was read; retrying a second later may
	// succeed. Only Stores made WithVerifyCache return it.
	ErrTooManyUnknownKeys = errors.New("keystore: too many unknown keys this second")
)

// ValidationError names the request field that failed validation and why.
// It matches ErrInvalidInput with errors.Is.
type ValidationError struct {
	Field  string // e.g. "Ratelimits[2].Name"
	Reason string // what is wrong, e.g. "must not be empty"
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("keystore: invalid input: %s: %s", e.Field, e.Reason)
}

func (e *ValidationError) Is(target error) bool { return target == ErrInvalidInput }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
