package faulttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/testutil"
)

// TestDeadlinesUnderLoad: 16 goroutines make 800 calls (CreateKey with and
// without permissions, UpdateKey adding a credit), each with a deadline
// drawn from 0-40 ms, so that contexts end at every stage of the calls,
// COMMIT and the one-round-trip block included. Every call returns success
// or an error matching its context's error, and a call that returned an
// error wrote nothing: no key carries its name, and no key has a credit
// that no successful UpdateKey added. The time from a deadline to the
// call's return is reported (p50, p99, max).
func TestDeadlinesUnderLoad(t *testing.T) {
	f := newFixture(t)
	settles := &testutil.SettleLog{}
	store, err := keystore.New(f.Direct, keystore.WithLogger(slog.New(settles)))
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds, workspace = 16, 25, "ws_deadlines"
	var (
		mu       sync.Mutex
		late     []time.Duration // from each deadline that passed to its call's return
		created  = map[string]int{}
		counts   = map[string]int{}
		foreign  []string
		deadline = func(rng *rand.Rand) (context.Context, context.CancelFunc, time.Time) {
			d := time.Duration(rng.IntN(41)) * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), d)
			at, _ := ctx.Deadline()
			return ctx, cancel, at
		}
	)
	record := func(op string, at time.Time, err error) bool {
		returned := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if returned.After(at) {
			late = append(late, returned.Sub(at))
		}
		switch {
		case err == nil:
			counts[op+" succeeded"]++
			return true
		case errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, keystore.ErrAmbiguousCommit):
			counts[op+" deadline"]++
		default:
			foreign = append(foreign, op+": "+err.Error())
		}
		return false
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(rand.Uint64(), uint64(w)))
			for i := range rounds {
				name := fmt.Sprintf("call-%d-%d", w, i)
				req := keystore.CreateKeyRequest{WorkspaceID: workspace, KeySpaceID: "ks", Name: name,
					ExternalID: fmt.Sprintf("owner-%d", i%4), Credits: &keystore.Credits{Remaining: startCredits}}
				if i%2 == 0 {
					req.Permissions = []string{"deadline.read", "deadline.write", fmt.Sprintf("owner%d.admin", i%4)}
					req.Ratelimits = []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute},
						{Name: "tokens", Limit: 5000, Duration: time.Hour}}
				}
				ctx, cancel, at := deadline(rng)
				k, err := store.CreateKey(ctx, req)
				cancel()
				if !record("create", at, err) {
					continue
				}
				ctx, cancel, at = deadline(rng)
				_, err = store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: workspace, KeyID: k.KeyID, AddCredits: 1})
				cancel()
				mu.Lock()
				created[k.KeyID] = 0
				mu.Unlock()
				if record("update", at, err) {
					mu.Lock()
					created[k.KeyID] = 1
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()

	t.Logf("outcomes: %v; lost commits settled: %d committed, %d not", counts, settles.Committed.Load(), settles.NotCommitted.Load())
	for _, f := range foreign {
		t.Errorf("an error that is not the context's: %s", f)
	}
	if len(late) > 0 {
		slices.Sort(late)
		p := func(q float64) time.Duration { return late[int(q*float64(len(late)-1))].Round(10 * time.Microsecond) }
		t.Logf("from the deadline to the return, %d calls: p50 %v, p99 %v, max %v", len(late), p(0.5), p(0.99), late[len(late)-1].Round(10*time.Microsecond))
		if late[len(late)-1] > prompt {
			t.Errorf("a call returned %v after its deadline", late[len(late)-1])
		}
	}

	var rows []struct {
		ID        string `db:"id"`
		Name      string `db:"name"`
		Remaining int    `db:"remaining"`
	}
	if err := f.Direct.Select(&rows, `SELECT id, name, remaining FROM keystore_keys WHERE workspace_id = ?`, workspace); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(created) {
		t.Errorf("%d keys in the database, %d CreateKey calls succeeded", len(rows), len(created))
	}
	for _, r := range rows {
		added, ok := created[r.ID]
		switch {
		case !ok:
			t.Errorf("key %s (%s) is in the database, but its CreateKey returned an error", r.ID, r.Name)
		case r.Remaining != startCredits+added:
			t.Errorf("key %s: %d credits, want %d (its UpdateKey succeeded: %v)", r.ID, r.Remaining, startCredits+added, added == 1)
		}
	}
}
