// Package keystorehttp guards net/http handlers with keystore API keys.
//
//	orders := keystorehttp.Require(store, keystore.VerifyKeyRequest{
//		KeySpaceID:  "ks_live",
//		Permissions: "orders.read",
//	})
//	mux.Handle("GET /orders", orders(listOrders))
//
// Require reads the key from the request (Authorization: Bearer, unless
// [WithKey] says otherwise), verifies it, and either calls the next handler
// with the [keystore.Verification] in the request's context (see
// [FromContext]) or answers for it:
//
//	401 Unauthorized       no key, or NOT_FOUND, EXPIRED, DISABLED
//	402 Payment Required   USAGE_EXCEEDED (see below)
//	403 Forbidden          INSUFFICIENT_PERMISSIONS
//	429 Too Many Requests  RATE_LIMITED, with Retry-After
//	500 Internal Error     the route's request is invalid (a bug, logged)
//	503 Unavailable        the Store failed (logged); with Retry-After: 1
//	                       when it declined to read an unknown key
//	                       (keystore.ErrTooManyUnknownKeys)
//
// The next handler is called only for a valid key: never when the Store
// failed.
//
// USAGE_EXCEEDED is 402, not 429: the key's credits are spent and do not
// come back by waiting (only a refill or a top-up restores them), and
// HTTP clients retry 429 on their own, which here would only repeat the
// refusal. 402 tells the caller that the account, not the request rate,
// needs attention. A service that wants 429 answers so from [WithDenial].
//
// The package uses the standard library only, besides keystore.
package keystorehttp

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/idsafe/keystore"
)

// Verifier verifies keys; *keystore.Store is one. A wrapper (for metrics,
// say) must return VerifyKey's error unchanged or wrapped, so that
// errors.Is still finds keystore's sentinel errors.
type Verifier interface {
	VerifyKey(ctx context.Context, req keystore.VerifyKeyRequest) (keystore.Verification, error)
}

// Option configures a middleware made by [Require].
type Option func(*config)

type config struct {
	key    func(*http.Request) string
	bearer bool // the key comes from Authorization: Bearer, so 401s name that scheme
	deny   func(http.ResponseWriter, *http.Request, Denial)
	log    *slog.Logger
}

// WithKey sets where the key comes from, for example
//
//	keystorehttp.WithKey(func(r *http.Request) string { return r.Header.Get("X-API-Key") })
//
// An empty string means the request has no key (401). The default is
// [BearerToken]. With another source, 401 answers carry no
// WWW-Authenticate header, which names the Bearer scheme.
func WithKey(from func(*http.Request) string) Option {
	return func(c *config) { c.key, c.bearer = from, false }
}

// WithDenial sets what writes the answer when the next handler is not
// called. The status line is not written yet; WWW-Authenticate and
// Retry-After are already set on w's header. The default is [WriteDenial].
func WithDenial(write func(w http.ResponseWriter, r *http.Request, d Denial)) Option {
	return func(c *config) { c.deny = write }
}

// WithLogger sets where 500 and 503 answers are logged, with the error and
// the request's method and path (never the key). The default is
// slog.Default(). Declines of unknown keys (keystore.ErrTooManyUnknownKeys)
// are not logged: they come in floods, and the Store counts them.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.log = l }
}

// Require returns a middleware that lets a request through only with a key
// that route verifies as valid. route is the request VerifyKey gets for
// every call, its Key taken from the HTTP request: the key space, the
// permission query, the cost and the ratelimits are per route, so make one
// middleware per kind of route. It is safe for concurrent use.
//
// It panics if v is nil, as a nil handler passed to net/http would.
func Require(v Verifier, route keystore.VerifyKeyRequest, opts ...Option) func(http.Handler) http.Handler {
	if v == nil {
		panic("keystorehttp: Require: nil Verifier")
	}
	c := config{key: BearerToken, bearer: true, deny: WriteDenial, log: slog.Default()}
	for _, o := range opts {
		o(&c)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req := route
			if req.Key = c.key(r); req.Key == "" {
				c.refuse(w, r, Denial{Status: http.StatusUnauthorized, Code: CodeMissingKey})
				return
			}
			ver, err := v.VerifyKey(r.Context(), req)
			if err != nil {
				c.refuse(w, r, failure(err))
				return
			}
			if !ver.Valid {
				c.refuse(w, r, refusal(ver, time.Now()))
				return
			}
			next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), ver)))
		})
	}
}

// refuse sets the headers the status calls for, logs server-side failures
// and hands the answer to the configured writer.
func (c *config) refuse(w http.ResponseWriter, r *http.Request, d Denial) {
	h := w.Header()
	switch {
	case d.Status == http.StatusUnauthorized && c.bearer:
		if d.Code == CodeMissingKey {
			h.Set("WWW-Authenticate", `Bearer`) // RFC 6750 3.1: no error code when no credentials were sent
		} else {
			h.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
	case d.Status == http.StatusForbidden && c.bearer:
		h.Set("WWW-Authenticate", `Bearer error="insufficient_scope"`)
	}
	if d.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((d.RetryAfter+time.Second-1)/time.Second)))
	}
	if d.Err != nil && d.Status >= 500 && !errors.Is(d.Err, keystore.ErrTooManyUnknownKeys) && r.Context().Err() == nil {
		c.log.ErrorContext(r.Context(), "keystorehttp: key not verified", "status", d.Status, "method", r.Method, "path", r.URL.Path, "err", d.Err)
	}
	c.deny(w, r, d)
}
