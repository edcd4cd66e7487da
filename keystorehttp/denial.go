package keystorehttp

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/idsafe/keystore"
)

// Codes of answers that are not a verification's: a Denial's Code is one
// of these or a keystore.VerificationCode.
const (
	CodeMissingKey         = "MISSING_KEY"           // 401: the request carries no key
	CodeTooManyUnknownKeys = "TOO_MANY_UNKNOWN_KEYS" // 503: keystore.ErrTooManyUnknownKeys
	CodeUnavailable        = "UNAVAILABLE"           // 503: the Store failed
	CodeInternal           = "INTERNAL"              // 500: the route's request is invalid
)

// Denial is an answer given instead of calling the next handler.
type Denial struct {
	Status int    // the HTTP status: 401, 402, 403, 429, 500 or 503
	Code   string // a keystore.VerificationCode, or one of the Code constants here
	// Verification is the Store's answer when the key was verified (Code
	// is its Code); the zero value otherwise.
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
	d := Denial{Status: statusOf[v.Code], Code: string(v.Code), Verification: v}
	if d.Status == 0 { // a code newer than this package: refuse without guessing why
		d.Status = http.StatusForbidden
	}
	if v.Code == keystore.CodeRateLimited {
		// The request may go through once every limit it exceeded has
		// started a new window.
		for _, rl := range v.RatelimitResults {
			if rl.Exceeded {
				d.RetryAfter = max(d.RetryAfter, rl.Reset.Sub(now), time.Second)
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
		return Denial{Status: http.StatusUnauthorized, Code: string(keystore.CodeNotFound)}
	case errors.Is(err, keystore.ErrInvalidInput):
		// The route's request is wrong, or names a ratelimit the key
		// lacks: a bug or a provisioning gap to fix, not the client's.
		return Denial{Status: http.StatusInternalServerError, Code: CodeInternal, Err: err}
	case errors.Is(err, keystore.ErrTooManyUnknownKeys):
		return Denial{Status: http.StatusServiceUnavailable, Code: CodeTooManyUnknownKeys, RetryAfter: time.Second, Err: err}
	default:
		return Denial{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Err: err}
	}
}

// messages are the default answers' human-readable texts.
var messages = map[string]string{
	CodeMissingKey:                               "no API key: send it as Authorization: Bearer <key>",
	string(keystore.CodeNotFound):                "the API key is not valid",
	string(keystore.CodeExpired):                 "the API key has expired",
	string(keystore.CodeDisabled):                "the API key is disabled",
	string(keystore.CodeUsageExceeded):           "the API key has no credits left",
	string(keystore.CodeInsufficientPermissions): "the API key lacks a permission this request needs",
	string(keystore.CodeRateLimited):             "the API key's rate limit is exhausted; retry after Retry-After seconds",
	CodeTooManyUnknownKeys:                       "too many unknown API keys; retry after Retry-After seconds",
	CodeUnavailable:                              "the API key could not be verified; try again later",
	CodeInternal:                                 "the API key could not be verified",
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
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // the messages hold "<key>"; the body is JSON, not HTML
	enc.Encode(struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{d.Code, messages[d.Code]})
}
