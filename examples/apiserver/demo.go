package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// step is one request of the demo and the answer it must get.
type step struct {
	method, path string
	who          string // whose key it sends, for the printout
	key          string // "" sends none
	body         any
	status       int
	code         string // the denial's code; "" for a success
}

// demo creates two customer keys through the API with the admin key, then
// sends requests that get each of the middleware's answers, printing them
// and failing on the first that is not as expected.
func demo(ctx context.Context, out io.Writer, base, adminKey string) error {
	c := client{ctx: ctx, base: base}
	acme, err := c.newKey(out, adminKey, newKey{ExternalID: "acme", Permissions: []string{"orders.read"}, RequestsPerHour: 2})
	if err != nil {
		return err
	}
	trial, err := c.newKey(out, adminKey, newKey{ExternalID: "trial", Permissions: []string{"orders.read"}, Credits: ptr(int64(1))})
	if err != nil {
		return err
	}
	steps := []step{
		{"GET", "/v1/orders", "no key", "", nil, 401, "MISSING_KEY"},
		{"GET", "/v1/orders", "made-up key", "sk_0000000000000000000000", nil, 401, "NOT_FOUND"},
		{"POST", "/v1/keys", "acme's key", acme, newKey{ExternalID: "mallory"}, 403, "INSUFFICIENT_PERMISSIONS"},
		{"POST", "/v1/keys", "admin key", adminKey, newKey{ExternalID: "mallory", Permissions: []string{"keys.create"}}, 400, ""},
		{"GET", "/v1/orders", "acme's key", acme, nil, 200, ""},
		{"GET", "/v1/orders", "acme's key", acme, nil, 200, ""},
		{"GET", "/v1/orders", "acme's key", acme, nil, 429, "RATE_LIMITED"}, // 2 an hour
		{"GET", "/v1/orders", "trial's key", trial, nil, 200, ""},
		{"GET", "/v1/orders", "trial's key", trial, nil, 402, "USAGE_EXCEEDED"}, // its 1 credit is spent
		{"GET", "/v1/orders", "admin key", adminKey, nil, 403, "INSUFFICIENT_PERMISSIONS"},
	}
	for _, s := range steps {
		if _, err := c.send(out, s); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "\nOK: every answer was the expected one.")
	return nil
}

type client struct {
	ctx  context.Context
	base string
}

// newKey creates a key through POST /v1/keys and returns its plaintext.
func (c client) newKey(out io.Writer, adminKey string, body newKey) (string, error) {
	answer, err := c.send(out, step{"POST", "/v1/keys", "admin key", adminKey, body, 201, ""})
	if err != nil {
		return "", err
	}
	key, _ := answer["key"].(string)
	if key == "" {
		return "", fmt.Errorf("POST /v1/keys answered no key: %v", answer)
	}
	return key, nil
}

// send sends s, prints the answer and checks it.
func (c client) send(out io.Writer, s step) (map[string]any, error) {
	var body io.Reader
	if s.body != nil {
		b, err := json.Marshal(s.body)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(c.ctx, s.method, c.base+s.path, body)
	if err != nil {
		return nil, err
	}
	if s.key != "" {
		req.Header.Set("Authorization", "Bearer "+s.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var answer map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return nil, fmt.Errorf("%s %s: %d with a body that is not JSON: %w", s.method, s.path, resp.StatusCode, err)
	}
	code, _ := answer["code"].(string)
	var extra []string
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		extra = append(extra, "Retry-After: "+ra)
	}
	if owner, ok := answer["owner"]; ok {
		extra = append(extra, fmt.Sprintf("owner %v, credits left %v", owner, cmpNil(answer["creditsLeft"], "unlimited")))
	}
	if e, ok := answer["error"]; ok {
		extra = append(extra, fmt.Sprint(e))
	}
	if id, ok := answer["keyId"]; ok {
		extra = append(extra, fmt.Sprintf("key %v", id))
	}
	line := fmt.Sprintf("%-4s %-10s %-12s -> %d %-24s %s", s.method, s.path, s.who, resp.StatusCode, code, strings.Join(extra, "; "))
	fmt.Fprintln(out, strings.TrimRight(line, " "))
	if resp.StatusCode != s.status || code != s.code {
		return nil, fmt.Errorf("%s %s with %s: got %d %s, want %d %s", s.method, s.path, s.who, resp.StatusCode, code, s.status, s.code)
	}
	return answer, nil
}

func cmpNil(v any, instead string) any {
	if v == nil {
		return instead
	}
	return v
}

func ptr[T any](v T) *T { return &v }
