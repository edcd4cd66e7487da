// Package keystorehttp guards net/http handlers with keystore API keys.
//
//	readOrders := keystorehttp.Require(store, keystore.VerifyKeyRequest{
//		WorkspaceID: "ws_1",
//		KeySpaceID:  "ks_live",
//		Permissions: "orders.read",
//	})
//	mux.Handle("GET /orders", readOrders(listOrders))
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
//	500 Internal Error     the key names no ratelimit the route asks for (logged)
//	503 Unavailable        the Store failed (logged); with Retry-After: 1
//	                       when it declined to read an unknown key
//	                       (keystore.ErrTooManyUnknownKeys)
//
// It fails closed: the next handler runs only for a valid verification,
// never when the Store failed, and no answer it gives is a success.
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
	"slices"
	"strconv"
	"time"

	"github.com/idsafe/keystore"
)

// Verifier verifies keys; *keystore.Store is one. A wrapper (for metrics,
// say) must return VerifyKey's errors unchanged or wrapped, so that
// errors.Is still finds keystore's sentinel errors, and must never put
// the key into an error or a log.
type Verifier interface {
	VerifyKey(ctx context.Context, req keystore.VerifyKeyRequest) (keystore.Verification, error)
}

// Option configures a middleware made by [Require].
type Option func(*config)

type config struct {
	key    func(*http.Request) string
	bearer bool // the key comes from Authorization: Bearer, so 401s name that scheme
	deny   func(http.ResponseWriter, *http.Request, Denial)
	log    *slog.Logger // nil: slog.Default() at the time of logging
}

// WithKey sets where the key comes from, for example
//
//	keystorehttp.WithKey(func(r *http.Request) string { return r.Header.Get("X-API-Key") })
//
// An empty string means the request has no key (401). The default is
// [BearerToken]. With another source, 401 answers carry no
// WWW-Authenticate header, which would name the Bearer scheme. Keep keys
// out of the URL: paths and queries end up in logs, this package's
// included. A nil from keeps the default.
func WithKey(from func(*http.Request) string) Option {
	return func(c *config) {
		if from != nil {
			c.key, c.bearer = from, false
		}
	}
}

// WithDenial sets what writes the answer when the next handler is not
// called; the default is [WriteDenial]. WWW-Authenticate and Retry-After
// are already set on w's header. The status sent is d.Status unless write
// sends another error status (400 and up): a write that sends none, or a
// success, gets d.Status. A nil write keeps the default.
func WithDenial(write func(w http.ResponseWriter, r *http.Request, d Denial)) Option {
	return func(c *config) {
		if write != nil {
			c.deny = write
		}
	}
}

// WithLogger sets where 500 and 503 answers are logged, with the error and
// the request's method and path (never the key). The default, also for a
// nil l, is slog.Default(). Declines of unknown keys
// (keystore.ErrTooManyUnknownKeys) are not logged: they come in floods, and
// the Store counts them.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.log = l }
}

// Require returns a middleware that lets a request through only with a key
// that route verifies as valid. route is the request VerifyKey gets for
// every call, its Key taken from the HTTP request: the key space, the
// permission query, the cost and the ratelimits are per route, so make one
// middleware per kind of route. Set route.WorkspaceID unless key-space ids
// are unique across workspaces. The middleware is safe for concurrent use.
//
// Require panics if v is nil or route is invalid (a *keystore.ValidationError
// naming the field, as [keystore.VerifyKeyRequest.Validate] reports it),
// as http.ServeMux panics on a bad pattern: both are bugs in the program,
// better found at start-up than on every request.
func Require(v Verifier, route keystore.VerifyKeyRequest, opts ...Option) func(http.Handler) http.Handler {
	if v == nil {
		panic("keystorehttp: Require: nil Verifier")
	}
	route.Key = "placeholder" // checked apart from the rest: it comes from each request
	if err := route.Validate(); err != nil {
		panic("keystorehttp: Require: the route's request: " + err.Error())
	}
	route.Ratelimits = slices.Clone(route.Ratelimits) // the caller's slice may change later
	c := config{key: BearerToken, bearer: true, deny: WriteDenial}
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
			switch {
			case err != nil:
				c.refuse(w, r, failure(err))
			case !ver.Valid || ver.Code != keystore.CodeValid:
				c.refuse(w, r, refusal(ver, time.Now()))
			default:
				next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), ver)))
			}
		})
	}
}

// refuse sets the headers the status calls for, logs server-side failures
// and hands the answer to the configured writer, making sure that what is
// sent is an error status.
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
		log := c.log
		if log == nil {
			log = slog.Default()
		}
		log.ErrorContext(r.Context(), "keystorehttp: key not verified", "status", d.Status, "method", r.Method, "path", r.URL.Path, "err", d.Err)
	}
	g := &errorStatus{ResponseWriter: w, status: d.Status}
	c.deny(g, r, d)
	if !g.sent {
		g.WriteHeader(d.Status)
	}
}

// errorStatus lets a denial writer choose its error status but never send
// a success: a status below 400, or none before the body, becomes status.
type errorStatus struct {
	http.ResponseWriter
	status int
	sent   bool
}

func (e *errorStatus) WriteHeader(code int) {
	if e.sent {
		return
	}
	e.sent = true
	if code < 400 {
		code = e.status
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *errorStatus) Write(b []byte) (int, error) {
	if !e.sent {
		e.WriteHeader(e.status)
	}
	return e.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (e *errorStatus) Unwrap() http.ResponseWriter { return e.ResponseWriter }
