package clustertest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// TestGaleraVerifyCacheSeesEveryNode: a Store with a verification cache on
// each of the three nodes. Keys are changed through every node, one after
// the other and then from all three at once (their change-feed writes
// meet in the cluster's certification); each change is in every node's
// answers once the bound has passed since it returned, and the answers
// before it came from memory.
func TestGaleraVerifyCacheSeesEveryNode(t *testing.T) {
	const bound = time.Second
	ctx := context.Background()
	env := newGaleraEnv(t, keystore.WithVerifyCache(1000, bound))
	keys := make([]keystore.CreatedKey, 6)
	for i := range keys {
		var err error
		if keys[i], err = env.stores[i%3].CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil {
			t.Fatal(err)
		}
	}
	// awaitEverywhere checks that once the bound has passed since from,
	// every node answers meta n for each key in keys.
	awaitEverywhere := func(from time.Time, n int, keys []keystore.CreatedKey) time.Duration {
		t.Helper()
		for {
			bounded := time.Since(from) >= bound
			stale := ""
			for node, s := range env.stores {
				for _, k := range keys {
					v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: k.Key})
					if err != nil {
						t.Fatalf("node %d: %v", node, err)
					}
					if fmt.Sprint(v.Meta["n"]) != fmt.Sprint(n) {
						stale = fmt.Sprintf("node %d answers meta %v for key %s, want %d", node, v.Meta, k.KeyID, n)
					}
				}
			}
			if stale == "" {
				return time.Since(from)
			}
			if bounded {
				t.Fatalf("after the bound: %s", stale)
			}
			time.Sleep(time.Millisecond)
		}
	}
	setMeta := func(node int, k keystore.CreatedKey, n int) error {
		_, err := env.stores[node].UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: k.KeyID,
			Meta: keystore.Set(map[string]any{"n": n})})
		return err
	}
	var slowest time.Duration
	for n := 1; n <= 15; n++ {
		k := keys[n%len(keys)]
		if err := setMeta(n%3, k, n); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, awaitEverywhere(time.Now(), n, []keystore.CreatedKey{k}))
	}
	hits := 0
	for _, s := range env.stores {
		hits += int(s.VerifyCacheStats().Hits)
	}
	// All three nodes at once, each on keys of its own.
	for n := 100; n < 110; n++ {
		var wg sync.WaitGroup
		errs := make([]error, len(keys))
		for i, k := range keys {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = setMeta(i%3, k, n)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		slowest = max(slowest, awaitEverywhere(time.Now(), n, keys))
	}
	t.Logf("changes seen on every node at most %v after they returned; %d answers from memory before the concurrent phase; %d retries",
		slowest.Round(time.Millisecond), hits, env.retries.Load())
	env.logOtherCauses(t)
	if hits == 0 {
		t.Error("no answer came from memory")
	}
}

// TestLaggingReplicaVerifyCache: a Store with a verification cache reads
// its misses from a replica. While the replica lags, a key is disabled
// through another Store: the caching Store answers DISABLED within the
// bound although the replica still has the key enabled (the replica's row
// is older than the change the Store has seen, so it reads the primary),
// and then answers it from memory again. The Store's own changes are in
// its answers at once.
func TestLaggingReplicaVerifyCache(t *testing.T) {
	const bound = 500 * time.Millisecond
	ctx := context.Background()
	env := newReplicaEnv(t, replicated(t), keystore.WithVerifyCache(1000, bound))
	writer := newStore(t, env.primary)
	key, err := writer.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, env.pair)
	verify := func() keystore.VerificationCode {
		t.Helper()
		v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key.Key})
		if err != nil {
			t.Fatal(err)
		}
		return v.Code
	}
	for start := time.Now(); env.store.VerifyCacheStats().Hits == 0; time.Sleep(time.Millisecond) {
		if code := verify(); code != keystore.CodeValid || time.Since(start) > 10*bound {
			t.Fatalf("before the change: %s, %+v", code, env.store.VerifyCacheStats())
		}
	}
	pauseReplication(t, env.pair)
	if _, err := writer.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: key.KeyID, Enabled: keystore.Set(false)}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	for verify() != keystore.CodeDisabled {
		if time.Since(changed) > bound {
			t.Fatalf("after the bound the caching Store still answers VALID: %+v", env.store.VerifyCacheStats())
		}
		time.Sleep(time.Millisecond)
	}
	seen := time.Since(changed)
	if n := count(t, env.replicaRoot, `SELECT COUNT(*) FROM keystore_keys WHERE id = ? AND enabled = 1`, key.KeyID); n != 1 {
		t.Fatal("the replica was not lagging: it has the key disabled")
	}
	hits := env.store.VerifyCacheStats().Hits
	for start := time.Now(); env.store.VerifyCacheStats().Hits == hits; time.Sleep(time.Millisecond) {
		if code := verify(); code != keystore.CodeDisabled || time.Since(start) > 10*bound {
			t.Fatalf("after the change: %s, %+v", code, env.store.VerifyCacheStats())
		}
	}
	t.Logf("the change was seen after %v with the replica lagging; %+v", seen.Round(time.Millisecond), env.store.VerifyCacheStats())

	// The caching Store's own change is in its answers at once, although
	// the replica it would read the key from lacks it.
	for n := range 20 {
		if _, err := env.store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: key.KeyID,
			Meta: keystore.Set(map[string]any{"n": n})}); err != nil {
			t.Fatal(err)
		}
		v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key.Key})
		if err != nil || fmt.Sprint(v.Meta["n"]) != fmt.Sprint(n) {
			t.Fatalf("right after the Store's own change %d: meta %v, %v", n, v.Meta, err)
		}
		time.Sleep(bound / 10)
	}
}
