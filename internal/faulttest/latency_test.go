package faulttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// TestLatencyBurstOneNewIdentity: with 20 ms ±10 ms added to every packet in
// both directions, 32 concurrent CreateKey calls for one new external id all
// succeed, exactly one identity exists, and every key is whole. Latency
// widens every race window of the identity protocol without breaking a
// connection, so no call has an excuse to fail.
func TestLatencyBurstOneNewIdentity(t *testing.T) {
	f := newFixture(t)
	rls := []keystore.Ratelimit{{Name: "requests", Limit: 10, Duration: time.Second}}
	want := map[string]expectation{"burst": {
		Permissions: []string{"burst.read", "burst.write"},
		Ratelimits:  ratelimitsJSON(t, f.Direct, rls),
	}}
	for _, stream := range []string{"upstream", "downstream"} {
		addToxic(t, f.Proxy, toxic{Name: "latency_" + stream, Type: "latency", Stream: stream, Toxicity: 1,
			Attributes: map[string]any{"latency": 20, "jitter": 10}})
	}
	if t.Failed() {
		t.FailNow()
	}
	store, err := keystore.New(f.Proxied)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 32
	errs := make([]error, n)
	identities := make([]string, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
				WorkspaceID: "ws_latency", KeySpaceID: "ks", Name: "burst", ExternalID: "burst",
				Permissions: []string{"burst.write", "burst.read"}, Ratelimits: rls,
			})
			errs[i], identities[i] = err, k.IdentityID
		}()
	}
	wg.Wait()
	t.Logf("%d calls in %v", n, time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		} else if identities[i] != identities[0] {
			t.Errorf("call %d: identity %s, call 0 got %s", i, identities[i], identities[0])
		}
	}
	ids := checkInvariants(t, f.Direct, "ws_latency", want)
	if len(ids) != n {
		t.Errorf("%d keys in the database, want %d", len(ids), n)
	}
	var identityRows int
	if err := f.Direct.Get(&identityRows, `SELECT COUNT(*) FROM keystore_identities WHERE workspace_id = 'ws_latency'`); err != nil {
		t.Fatal(err)
	}
	if identityRows != 1 {
		t.Errorf("%d identity rows, want 1", identityRows)
	}
	waitIdle(t, f.Proxied)
}
