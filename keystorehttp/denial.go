package keystorehttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/idsafe/keystore"
)

// Codes of answers that are not a verification's.
const (
	CodeMissingKey         keystore.VerificationCode = "MISSING_KEY"           // 401: the request carries no key
	CodeTooManyUnknownKeys keystore.VerificationCode = "TOO_MANY_UNKNOWN_KEYS" // 503: keystore.ErrTooManyUnknownKeys
	CodeUnavailable        keystore.VerificationCode = "UNAVAILABLE"           // 503: the Store failed
	CodeInternal           keystore.VerificationCode = "INTERNAL"              // 500: see Denial.Err
)

// Denial is an answer given instead of calling the next handler.
type Denial struct {
	Status int // the HTTP status: 401, 402, 403, 429, 500 or 503
	// Code is the verification's code, or one of the Code constants of
	// this package.
	Code keystore.VerificationCode
	// Verification is the Store's answer when the key was verified; the
	// zero value otherwise.
	Verification keystore.Verification
	// RetryAfter is how long to wait before trying again, already sent
	// as Retry-After in whole seconds (rounded up); 0 when waiting will
	// not help or is not known.
	RetryAfter time.Duration
	Err        error // why the key could not be verified (500, 503); nil otherwise
}

// statusOf maps each verification code that is not valid to its status.
var statusOf = map[keystore.VerificationCode]int{
	keystore.CodeNotFound:                http.StatusUnauthorized,
	keystore.CodeExpired:                 http.StatusUnauthorized,
	keystore.CodeDisabled:                http.StatusUnauthorized,
	keystore.CodeUsageExceeded:           http.StatusPaymentRequired,
	keystore.CodeInsufficientPermissions: http.StatusForbidden,
	keystore.CodeRateLimited:             http.StatusTooManyRequests,
}

// refusal is the Denial of a verification that is not valid.
func refusal(v keystore.Verification, now time.Time) Denial {
	status, ok := statusOf[v.Code]
	if !ok { // a code this package does not know (a Verifier's own, or a newer one): refuse, loudly
		return Denial{Status: http.StatusInternalServerError, Code: CodeInternal, Verification: v,
			Err: fmt.Errorf("keystorehttp: a verification that is not valid, with code %q", v.Code)}
	}
	d := Denial{Status: status, Code: v.Code, Verification: v}
	if v.Code == keystore.CodeRateLimited {
		// The request may go through once every limit it exceeded has
		// started a new window: at most a window away, at least a second.
		d.RetryAfter = time.Second
		for _, rl := range v.RatelimitResults {
			if rl.Exceeded {
				d.RetryAfter = max(d.RetryAfter, min(rl.Reset.Sub(now), rl.Duration))
			}
		}
	}
	return d
}

// failure is the Denial of a VerifyKey call that returned err.
func failure(err error) Denial {
	var invalid *keystore.ValidationError
	switch {
	case errors.As(err, &invalid) && invalid.Field == "Key":
		// Too long to be any key: to the client, an unknown one.
		return Denial{Status: http.StatusUnauthorized, Code: keystore.CodeNotFound}
	case errors.Is(err, keystore.ErrInvalidInput):
		// Require checked the route, so the key lacks a ratelimit the
		// route names: a provisioning gap to fix, not the client's.
		return Denial{Status: http.StatusInternalServerError, Code: CodeInternal, Err: err}
	case errors.Is(err, keystore.ErrTooManyUnknownKeys):
		return Denial{Status: http.StatusServiceUnavailable, Code: CodeTooManyUnknownKeys, RetryAfter: time.Second, Err: err}
	default:
		return Denial{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Err: err}
	}
}

// messages are the default answers' human-readable texts.
var messages = map[keystore.VerificationCode]string{
	CodeMissingKey:                       "the request carries no API key",
	keystore.CodeNotFound:                "the API key is not valid",
	keystore.CodeExpired:                 "the API key has expired",
	keystore.CodeDisabled:                "the API key is disabled",
	keystore.CodeUsageExceeded:           "the API key has no credits left",
	keystore.CodeInsufficientPermissions: "the API key lacks a permission this request needs",
	keystore.CodeRateLimited:             "the API key's rate limit is exhausted; retry after Retry-After seconds",
	CodeTooManyUnknownKeys:               "too many unknown API keys; retry after Retry-After seconds",
	CodeUnavailable:                      "the API key could not be verified; try again later",
	CodeInternal:                         "the API key could not be verified",
}

// WriteDenial is the default answer: d.Status with a JSON body
// {"code": ..., "message": ...}. It never includes d.Err, which may
// describe the server's internals.
func WriteDenial(w http.ResponseWriter, _ *http.Request, d Denial) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(d.Status)
	json.NewEncoder(w).Encode(struct {
		Code    keystore.VerificationCode `json:"code"`
		Message string                    `json:"message"`
	}{d.Code, messages[d.Code]})
}
