package keystorehttp

import (
	"context"

	"github.com/idsafe/keystore"
)

type contextKey struct{}

// FromContext returns the verification [Require] put in a request's
// context, and whether there is one. It is always valid.
func FromContext(ctx context.Context) (keystore.Verification, bool) {
	v, ok := ctx.Value(contextKey{}).(keystore.Verification)
	return v, ok
}

// NewContext returns ctx carrying v, as [Require] passes it to the next
// handler; tests of such handlers can call it instead of verifying a key.
func NewContext(ctx context.Context, v keystore.Verification) context.Context {
	return context.WithValue(ctx, contextKey{}, v)
}
