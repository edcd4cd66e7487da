package faulttest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/testutil"
)

// startCredits is what every key of TestMutationsUnderFaults starts with;
// each successful UpdateKey adds one.
const startCredits = 1000

// TestMutationsUnderFaults: 16 goroutines create keys (with permissions,
// sent statement by statement, and without, in one round trip on MariaDB),
// add a credit to their keys and delete some, through the proxy that keeps
// resetting connections, leaving them half-open and going down. The server
// stays up, so every lost commit is settled: no call may return
// ErrAmbiguousCommit. Afterwards, on the server directly, every call that
// succeeded is there exactly once and every call that failed left nothing:
// the keys are exactly the successful creates, each key's credits are its
// start plus its successful updates, and a key is deleted exactly when its
// DeleteKey succeeded. With the audit trail and without (the receipts are
// then the keys themselves and rows of keystore_receipts).
func TestMutationsUnderFaults(t *testing.T) {
	t.Run("audit", func(t *testing.T) { mutationsUnderFaults(t) })
	t.Run("WithoutAudit", func(t *testing.T) { mutationsUnderFaults(t, keystore.WithoutAudit()) })
}

func mutationsUnderFaults(t *testing.T, opts ...keystore.Option) {
	f := newFixture(t)
	settles := &testutil.SettleLog{}
	store, err := keystore.New(f.Proxied, append(opts, keystore.WithLogger(slog.New(settles)))...)
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds, workspace = 16, 40, "ws_mutations"

	type keyState struct {
		updates int
		deleted bool
	}
	var (
		mu      sync.Mutex
		keys    = map[string]*keyState{}
		tallies = map[string]map[outcome]int{"create": {}, "update": {}, "delete": {}}
		samples []string
	)
	record := func(op string, err error) outcome {
		o := classify(err)
		mu.Lock()
		defer mu.Unlock()
		tallies[op][o]++
		if o != succeeded && o != exhausted && len(samples) < 5 {
			samples = append(samples, op+": "+err.Error())
		}
		return o
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan struct{})
	faults := make(chan map[string]int, 1)
	go func() { faults <- breakConnections(t, f, done) }()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var mine []string
			for i := range rounds {
				req := keystore.CreateKeyRequest{WorkspaceID: workspace, KeySpaceID: "ks",
					ExternalID: fmt.Sprintf("owner-%d", i%8), Credits: &keystore.Credits{Remaining: startCredits}}
				if i%2 == 0 {
					req.Permissions = []string{"common.read", fmt.Sprintf("owner%d.write", i%8)}
				}
				k, err := store.CreateKey(ctx, req)
				if record("create", err) == succeeded {
					mu.Lock()
					keys[k.KeyID] = &keyState{}
					mu.Unlock()
					mine = append(mine, k.KeyID)
				}
				if len(mine) == 0 {
					continue
				}
				for range 2 {
					id := mine[rng.IntN(len(mine))]
					_, err := store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: workspace, KeyID: id, AddCredits: 1})
					if record("update", err) == succeeded {
						mu.Lock()
						keys[id].updates++
						mu.Unlock()
					}
				}
				if i%4 == 3 {
					j := rng.IntN(len(mine))
					id := mine[j]
					mine = append(mine[:j], mine[j+1:]...)
					if record("delete", store.DeleteKey(ctx, workspace, id)) == succeeded {
						mu.Lock()
						keys[id].deleted = true
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	injected := <-faults
	if ctx.Err() != nil {
		t.Fatalf("the workload hit its deadline: a call hung")
	}
	calls := 0
	for op, tl := range tallies {
		calls += tl[succeeded] + tl[ambiguous] + tl[exhausted] + tl[unclassified]
		t.Logf("%s: %d succeeded, %d ambiguous commits, %d retries exhausted, %d other errors",
			op, tl[succeeded], tl[ambiguous], tl[exhausted], tl[unclassified])
		if tl[ambiguous]+tl[unclassified] > 0 {
			t.Errorf("%s: %d ambiguous commits and %d other errors while the server was up", op, tl[ambiguous], tl[unclassified])
		}
	}
	t.Logf("%d mutations in %v; faults injected: %v", calls, time.Since(start).Round(time.Millisecond), injected)
	t.Logf("lost commits settled: %d committed, %d not committed", settles.Committed.Load(), settles.NotCommitted.Load())
	if settles.Settled() == 0 {
		t.Errorf("no commit was lost: the faults did not test settling")
	}
	for _, s := range samples {
		t.Logf("error: %s", s)
	}

	var rows []struct {
		ID        string `db:"id"`
		Remaining int    `db:"remaining"`
		Deleted   bool   `db:"deleted"`
	}
	if err := f.Direct.Select(&rows, `SELECT id, remaining, deleted_at IS NOT NULL AS deleted
		FROM keystore_keys WHERE workspace_id = ?`, workspace); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(keys) {
		t.Errorf("%d keys in the database, %d CreateKey calls succeeded", len(rows), len(keys))
	}
	for _, r := range rows {
		k, ok := keys[r.ID]
		switch {
		case !ok:
			t.Errorf("key %s is in the database, but no CreateKey returned it", r.ID)
		case r.Remaining != startCredits+k.updates:
			t.Errorf("key %s: %d credits after %d successful updates, want %d", r.ID, r.Remaining, k.updates, startCredits+k.updates)
		case r.Deleted != k.deleted:
			t.Errorf("key %s: deleted %v, but its DeleteKey succeeded: %v", r.ID, r.Deleted, k.deleted)
		}
	}
	var dups int
	if err := f.Direct.Get(&dups, `SELECT COUNT(*) FROM (SELECT external_id FROM keystore_identities
		WHERE workspace_id = ? AND deleted_at IS NULL GROUP BY external_id HAVING COUNT(*) > 1) d`, workspace); err != nil || dups != 0 {
		t.Errorf("%d external ids with more than one live identity (%v)", dups, err)
	}
	waitIdle(t, f.Proxied)
}
