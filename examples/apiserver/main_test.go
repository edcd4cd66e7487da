package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/idsafe/keystore/keystoretest"
)

func TestMain(m *testing.M) { keystoretest.Main(m) }

// TestDemo runs the whole program on a fresh database: run itself fails
// on any answer that is not the expected one.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), keystoretest.DSN(t), "", &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"-> 429 RATE_LIMITED", "Retry-After: ", "-> 402 USAGE_EXCEEDED", "owner acme", "OK: every answer"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q:\n%s", want, out.String())
		}
	}
}
