package keystorehttp_test

import (
	"net/http"
	"testing"

	"github.com/idsafe/keystore/keystorehttp"
)

func TestBearerToken(t *testing.T) {
	cases := map[string]string{
		"Bearer abc":       "abc",
		"bearer abc":       "abc",
		"  Bearer   abc  ": "abc",
		"Bearer":           "",
		"Bearer ":          "",
		"Basic abc":        "",
		"Bearerabc":        "",
		"":                 "",
		"Token abc":        "",
	}
	for header, want := range cases {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		if got := keystorehttp.BearerToken(r); got != want {
			t.Errorf("%q: got %q, want %q", header, got, want)
		}
	}
}
