package keystorehttp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystorehttp"
	"github.com/idsafe/keystore/keystoretest"
)

func TestMain(m *testing.M) { keystoretest.Main(m) }

const (
	workspace = "ws"
	keySpace  = "ks"
)

// answer is what one request got back.
type answer struct {
	status     int
	code       keystore.VerificationCode // the JSON body's code on a denial
	body       string
	keyID      string // the verification the handler found in its context
	externalID string
	remaining  *int64
	header     http.Header
}

// server serves routes guarded by Require on store, with a handler that
// echoes the verification it finds in its context and counts its calls.
type server struct {
	*httptest.Server
	calls atomic.Int64
}

func newServer(t *testing.T, v keystorehttp.Verifier, opts ...keystorehttp.Option) *server {
	t.Helper()
	s := &server{}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		v, ok := keystorehttp.FromContext(r.Context())
		if !ok || !v.Valid {
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprint(w, `{"code":"no valid verification in the context"}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"keyID": v.KeyID, "externalID": v.ExternalID, "remaining": v.Remaining})
	})
	route := func(req keystore.VerifyKeyRequest) http.Handler {
		req.WorkspaceID, req.KeySpaceID = workspace, keySpace
		return keystorehttp.Require(v, req, opts...)(echo)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /orders", route(keystore.VerifyKeyRequest{Permissions: "orders.read"}))
	mux.Handle("GET /admin", route(keystore.VerifyKeyRequest{Permissions: "admin"}))
	mux.Handle("GET /search", route(keystore.VerifyKeyRequest{Ratelimits: []keystore.RatelimitRequest{{Name: "search"}}}))
	mux.Handle("GET /open", echo) // no middleware: no verification in the context
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// get sends a GET of path with the given Authorization header ("" for
// none) and decodes the answer.
func (s *server) get(t *testing.T, path, authorization string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return s.do(t, req)
}

func (s *server) do(t *testing.T, req *http.Request) answer {
	t.Helper()
	a, err := s.try(req)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// try is do for goroutines other than the test's, which must not call
// t.Fatal.
func (s *server) try(req *http.Request) (answer, error) {
	resp, err := s.Client().Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(body)}
	var decoded struct {
		Code       keystore.VerificationCode `json:"code"`
		KeyID      string                    `json:"keyID"`
		ExternalID string                    `json:"externalID"`
		Remaining  *int64                    `json:"remaining"`
	}
	if err := json.Unmarshal(body, &decoded); err != nil {
		return a, fmt.Errorf("%s: status %d, body %q is not JSON: %v", req.URL.Path, resp.StatusCode, body, err)
	}
	a.code, a.keyID, a.externalID, a.remaining = decoded.Code, decoded.KeyID, decoded.ExternalID, decoded.Remaining
	return a, nil
}

func createKey(t *testing.T, store *keystore.Store, req keystore.CreateKeyRequest) keystore.CreatedKey {
	t.Helper()
	req.WorkspaceID, req.KeySpaceID = workspace, keySpace
	k, err := store.CreateKey(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRequireAnswersEachOutcome(t *testing.T) {
	store := keystoretest.NewStore(t)
	srv := newServer(t, store)
	good := createKey(t, store, keystore.CreateKeyRequest{ExternalID: "acme", Permissions: []string{"orders.read"}})
	disabled := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"}, Disabled: true})
	expires := time.Now().Add(300 * time.Millisecond)
	expiring := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"}, Expires: &expires})
	otherSpace, err := store.CreateKey(context.Background(), keystore.CreateKeyRequest{WorkspaceID: workspace, KeySpaceID: "other", Permissions: []string{"orders.read"}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(expires) + 50*time.Millisecond)

	const bearer = `Bearer`
	const invalidToken = `Bearer error="invalid_token"`
	cases := []struct {
		name, path, authorization string
		status                    int
		code                      keystore.VerificationCode
		wwwAuthenticate           string
	}{
		{"no header", "/orders", "", 401, keystorehttp.CodeMissingKey, bearer},
		{"another scheme", "/orders", "Basic " + good.Key, 401, keystorehttp.CodeMissingKey, bearer},
		{"empty token", "/orders", "Bearer ", 401, keystorehttp.CodeMissingKey, bearer},
		{"unknown key", "/orders", "Bearer sk_made_up", 401, "NOT_FOUND", invalidToken},
		{"longer than any key", "/orders", "Bearer " + strings.Repeat("k", 600), 401, "NOT_FOUND", invalidToken},
		{"key of another key space", "/orders", "Bearer " + otherSpace.Key, 401, "NOT_FOUND", invalidToken},
		{"disabled", "/orders", "Bearer " + disabled.Key, 401, "DISABLED", invalidToken},
		{"expired", "/orders", "Bearer " + expiring.Key, 401, "EXPIRED", invalidToken},
		{"missing permission", "/admin", "Bearer " + good.Key, 403, "INSUFFICIENT_PERMISSIONS", `Bearer error="insufficient_scope"`},
		{"route names a ratelimit the key lacks", "/search", "Bearer " + good.Key, 500, keystorehttp.CodeInternal, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := srv.calls.Load()
			a := srv.get(t, c.path, c.authorization)
			if a.status != c.status || a.code != c.code {
				t.Errorf("got %d %s, want %d %s", a.status, a.code, c.status, c.code)
			}
			if got := a.header.Get("WWW-Authenticate"); got != c.wwwAuthenticate {
				t.Errorf("WWW-Authenticate %q, want %q", got, c.wwwAuthenticate)
			}
			if got := a.header.Get("Content-Type"); got != "application/json; charset=utf-8" {
				t.Errorf("Content-Type %q", got)
			}
			if n := srv.calls.Load() - before; n != 0 {
				t.Errorf("the handler ran %d times for a refused request", n)
			}
		})
	}

	t.Run("valid, the verification in the context", func(t *testing.T) {
		for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
			a := srv.get(t, "/orders", scheme+"  "+good.Key+" ")
			if a.status != 200 || a.keyID != good.KeyID || a.externalID != "acme" {
				t.Errorf("%s: got %d, key %q, owner %q; want 200, %q, acme", scheme, a.status, a.keyID, a.externalID, good.KeyID)
			}
		}
		if a := srv.get(t, "/open", "Bearer "+good.Key); a.status != http.StatusTeapot {
			t.Errorf("a route without Require found a verification in its context (status %d)", a.status)
		}
	})

	t.Run("two Authorization headers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/orders", nil)
		req.Header.Add("Authorization", "Bearer "+good.Key)
		req.Header.Add("Authorization", "Bearer "+good.Key)
		if a := srv.do(t, req); a.status != 401 || a.code != keystorehttp.CodeMissingKey {
			t.Errorf("got %d %s, want 401 %s", a.status, a.code, keystorehttp.CodeMissingKey)
		}
	})
}

// TestRequireSpendsCreditsExactly sends more concurrent requests than a
// key has credits: exactly as many get through as there were credits, the
// rest get 402, and the database holds none left.
func TestRequireSpendsCreditsExactly(t *testing.T) {
	store := keystoretest.NewStore(t)
	srv := newServer(t, store)
	const credits, requests = 7, 40
	k := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"}, Credits: &keystore.Credits{Remaining: credits}})
	statuses := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/orders", nil)
			req.Header.Set("Authorization", "Bearer "+k.Key)
			a, err := srv.try(req)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			statuses[a.status]++
			if a.status == 402 && (a.code != keystore.CodeUsageExceeded || a.header.Get("Retry-After") != "") {
				t.Errorf("402 with code %s and Retry-After %q, want USAGE_EXCEEDED and none", a.code, a.header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	if statuses[200] != credits || statuses[402] != requests-credits {
		t.Errorf("statuses %v, want %d × 200 and %d × 402", statuses, credits, requests-credits)
	}
	if n := srv.calls.Load(); n != credits {
		t.Errorf("the handler ran %d times, want %d", n, credits)
	}
	got, err := store.GetKey(context.Background(), workspace, k.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Credits == nil || got.Credits.Remaining != 0 {
		t.Errorf("credits left in the database: %+v, want 0", got.Credits)
	}
}

// TestRequireRateLimitedRetryAfter exhausts an hourly limit: the answer is
// 429 with Retry-After the seconds until the window ends.
func TestRequireRateLimitedRetryAfter(t *testing.T) {
	store := keystoretest.NewStore(t)
	srv := newServer(t, store)
	k := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"},
		Ratelimits: []keystore.Ratelimit{{Name: "hourly", Limit: 3, Duration: time.Hour, AutoApply: true}}})
	// The four requests must fall in one window.
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 10*time.Second {
		time.Sleep(left + time.Second)
	}
	for i := range 3 {
		if a := srv.get(t, "/orders", "Bearer "+k.Key); a.status != 200 {
			t.Fatalf("request %d within the limit: %d %s", i, a.status, a.code)
		}
	}
	a := srv.get(t, "/orders", "Bearer "+k.Key)
	now := time.Now()
	if a.status != 429 || a.code != "RATE_LIMITED" {
		t.Fatalf("over the limit: %d %s, want 429 RATE_LIMITED", a.status, a.code)
	}
	got, err := strconv.Atoi(a.header.Get("Retry-After"))
	if err != nil {
		t.Fatalf("Retry-After %q: %v", a.header.Get("Retry-After"), err)
	}
	// Windows start at multiples of the duration since the Unix epoch.
	want := int(math.Ceil(now.Truncate(time.Hour).Add(time.Hour).Sub(now).Seconds()))
	if got < 1 || got < want-2 || got > want+2 {
		t.Errorf("Retry-After %d, want about %d (the window ends on the hour)", got, want)
	}
	if n := srv.calls.Load(); n != 3 {
		t.Errorf("the handler ran %d times, want 3", n)
	}
}

// TestRequireStoreFailure: when the Store cannot verify, the answer is 503,
// the handler never runs, and the error is logged without the key.
func TestRequireStoreFailure(t *testing.T) {
	// A real database without keystore's tables: every lookup fails.
	unmigrated, err := keystore.New(keystoretest.DB(t))
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	srv := newServer(t, unmigrated, keystorehttp.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	const key = "sk_would_be_valid_elsewhere"
	for range 3 {
		a := srv.get(t, "/orders", "Bearer "+key)
		if a.status != 503 || a.code != keystorehttp.CodeUnavailable || a.header.Get("Retry-After") != "" {
			t.Errorf("got %d %s Retry-After %q, want 503 %s and none", a.status, a.code, a.header.Get("Retry-After"), keystorehttp.CodeUnavailable)
		}
		if strings.Contains(a.body, "keystore_") || strings.Contains(a.body, "1146") {
			t.Errorf("the answer tells the database's error: %s", a.body)
		}
	}
	if n := srv.calls.Load(); n != 0 {
		t.Errorf("the handler ran %d times with a failing store", n)
	}
	log := logged.String()
	if strings.Count(log, "status=503") != 3 || !strings.Contains(log, "keystore_") || !strings.Contains(log, "path=/orders") {
		t.Errorf("want 3 logged failures naming the missing table and the path, got:\n%s", log)
	}
	if strings.Contains(log, key) {
		t.Errorf("the log holds the key:\n%s", log)
	}
}

// TestRequireTooManyUnknownKeys floods a caching Store with made-up keys
// until it declines to read them: those answers are 503 with
// Retry-After: 1, and a real key still gets through afterwards.
func TestRequireTooManyUnknownKeys(t *testing.T) {
	store := keystoretest.NewStore(t, keystore.WithVerifyCache(1000, time.Second))
	var logged bytes.Buffer
	srv := newServer(t, store, keystorehttp.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	good := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"}})
	if a := srv.get(t, "/orders", "Bearer "+good.Key); a.status != 200 { // starts the read of the known keys
		t.Fatalf("valid key: %d %s", a.status, a.code)
	}
	for start := time.Now(); store.VerifyCacheStats().KnownKeys < 1; time.Sleep(time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the known keys were not read: %+v", store.VerifyCacheStats())
		}
	}
	var declined, unknown, other atomic.Int64
	var sample atomic.Pointer[answer]
	// Through the real server, on connections kept open between requests.
	srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = 16
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; declined.Load() < 100 && time.Now().Before(deadline); i++ {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/orders", nil)
				req.Header.Set("Authorization", fmt.Sprintf("Bearer guess_%d_%d", g, i))
				a, err := srv.try(req)
				switch {
				case err != nil:
					t.Error(err)
					return
				case a.status == 503:
					declined.Add(1)
					sample.Store(&a)
				case a.status == 401:
					unknown.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if declined.Load() < 100 || other.Load() != 0 {
		t.Fatalf("made-up keys: %d declined, %d unknown, %d other answers; want at least 100 declined and no other", declined.Load(), unknown.Load(), other.Load())
	}
	a := sample.Load()
	if a.code != keystorehttp.CodeTooManyUnknownKeys || a.header.Get("Retry-After") != "1" {
		t.Errorf("a declined key: %s Retry-After %q, want %s and 1", a.code, a.header.Get("Retry-After"), keystorehttp.CodeTooManyUnknownKeys)
	}
	if got := store.VerifyCacheStats().Declined; got != declined.Load() {
		t.Errorf("the Store declined %d keys, the middleware answered 503 for %d", got, declined.Load())
	}
	if logged.Len() != 0 {
		t.Errorf("declines were logged:\n%s", logged.String())
	}
	if a := srv.get(t, "/orders", "Bearer "+good.Key); a.status != 200 || a.keyID != good.KeyID {
		t.Errorf("the known key during the flood's aftermath: %d %s", a.status, a.code)
	}
}

// TestRequireOptions: a key from another header (and no WWW-Authenticate,
// which names the Bearer scheme), and answers of the service's own, which
// may change the error status but never send a success.
func TestRequireOptions(t *testing.T) {
	store := keystoretest.NewStore(t)
	k := createKey(t, store, keystore.CreateKeyRequest{Permissions: []string{"orders.read"}, Credits: &keystore.Credits{Remaining: 1}})
	var denials []keystorehttp.Denial
	srv := newServer(t, store,
		keystorehttp.WithKey(func(r *http.Request) string { return r.Header.Get("X-API-Key") }),
		keystorehttp.WithDenial(func(w http.ResponseWriter, r *http.Request, d keystorehttp.Denial) {
			denials = append(denials, d)
			switch d.Code {
			case keystore.CodeUsageExceeded:
				w.WriteHeader(http.StatusTooManyRequests) // the service's choice
			case keystore.CodeNotFound:
				w.WriteHeader(http.StatusOK) // a bug the middleware must not pass on
			} // MISSING_KEY: no status at all
			fmt.Fprintf(w, `{"code":%q}`, "mine:"+d.Code)
		}))
	send := func(key string) answer {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/orders", nil)
		req.Header.Set("X-API-Key", key)
		return srv.do(t, req)
	}
	if a := send(k.Key); a.status != 200 || a.keyID != k.KeyID {
		t.Fatalf("X-API-Key: %d %s", a.status, a.code)
	}
	if a := srv.get(t, "/orders", "Bearer "+k.Key); a.status != 401 || a.code != "mine:MISSING_KEY" || a.header.Get("WWW-Authenticate") != "" {
		t.Errorf("a Bearer key where X-API-Key is read: %d %s WWW-Authenticate %q", a.status, a.code, a.header.Get("WWW-Authenticate"))
	}
	if a := send("sk_made_up"); a.status != 401 || a.code != "mine:NOT_FOUND" {
		t.Errorf("an unknown key whose answer tried 200: %d %s, want 401", a.status, a.code)
	}
	if a := send(k.Key); a.status != 429 || a.code != "mine:USAGE_EXCEEDED" {
		t.Errorf("spent key: %d %s, want the service's own 429", a.status, a.code)
	}
	if len(denials) != 3 || denials[2].Verification.KeyID != k.KeyID || denials[2].Status != 402 {
		t.Errorf("denials %+v: want three, the last with the key's verification and status 402", denials)
	}
	if n := srv.calls.Load(); n != 1 {
		t.Errorf("the handler ran %d times, want 1", n)
	}
}

// TestRequireRefusesInvalidRoutes: a route VerifyKey would refuse on every
// request is a bug found when the middleware is made.
func TestRequireRefusesInvalidRoutes(t *testing.T) {
	store := keystoretest.NewStore(t)
	for name, route := range map[string]keystore.VerifyKeyRequest{
		"Permissions": {KeySpaceID: keySpace, Permissions: "orders.read AND"},
		"KeySpaceID":  {},
		"Cost":        {KeySpaceID: keySpace, Cost: -1},
	} {
		func() {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), name) {
					t.Errorf("%s: Require panicked with %v, want a panic naming the field", name, p)
				}
			}()
			keystorehttp.Require(store, route)
		}()
	}
}

// TestFromContext: only a valid verification is reported present.
func TestFromContext(t *testing.T) {
	ctx := context.Background()
	if _, ok := keystorehttp.FromContext(ctx); ok {
		t.Error("an empty context has a verification")
	}
	if _, ok := keystorehttp.FromContext(keystorehttp.NewContext(ctx, keystore.Verification{Code: keystore.CodeDisabled, KeyID: "k"})); ok {
		t.Error("a verification that is not valid is reported present")
	}
	v, ok := keystorehttp.FromContext(keystorehttp.NewContext(ctx, keystore.Verification{Valid: true, Code: keystore.CodeValid, KeyID: "k"}))
	if !ok || v.KeyID != "k" {
		t.Errorf("got %+v %v, want the valid verification", v, ok)
	}
}
