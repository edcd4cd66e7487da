package keystorehttp

import (
	"context"

	"github.com/idsafe/keystore"
)

type contextKey struct{}

// FromContext returns the verification [Require] put in a request's
// context, and whether there is a valid one. A handler mounted without
// Require finds none: check ok rather than serve an empty identity.
func FromContext(ctx context.Context) (keystore.Verification, bool) {
	v, ok := ctx.Value(contextKey{}).(keystore.Verification)
	if !ok || !v.Valid {
		return keystore.Verification{}, false
	}
	return v, true
}

// NewContext returns ctx carrying v, as [Require] passes it to the next
// handler; tests of such handlers can call it instead of verifying a key.
// FromContext reports a v that is not Valid as absent.
func NewContext(ctx context.Context, v keystore.Verification) context.Context {
	return context.WithValue(ctx, contextKey{}, v)
}
