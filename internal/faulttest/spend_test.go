package faulttest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// TestCreditSpendsUnderResets runs 16 goroutines of VerifyKey spending one
// key's credits through a proxy that keeps breaking connections, as
// TestConnectionResetsUnderLoad does. A spend is never counted twice and
// never lost silently: every credit gone from the balance belongs to a call
// that answered valid or that returned ErrAmbiguousCommit (its UPDATE was
// sent and its reply lost), and every valid answer took one.
func TestCreditSpendsUnderResets(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	direct, err := keystore.New(f.Direct)
	if err != nil {
		t.Fatal(err)
	}
	const initial = 1_000_000
	c, err := direct.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: initial}})
	if err != nil {
		t.Fatal(err)
	}
	store, err := keystore.New(f.Proxied)
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	faults := make(chan map[string]int, 1)
	go func() { faults <- breakConnections(t, f, done) }()
	var valid, ambiguous, failed atomic.Int64
	var mu sync.Mutex
	var samples []string
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				v, err := store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
				switch {
				case err == nil && v.Valid:
					valid.Add(1)
				case err == nil:
					mu.Lock()
					samples = append(samples, "answer "+string(v.Code))
					mu.Unlock()
				case errors.Is(err, keystore.ErrAmbiguousCommit):
					ambiguous.Add(1)
				default: // the lookup failed, or the UPDATE was never sent: nothing spent
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	injected := <-faults
	if ctx.Err() != nil {
		t.Fatal("the workload hit its 90s deadline: a call hung")
	}
	for _, s := range samples {
		t.Errorf("unexpected %s", s)
	}
	var remaining int64
	if err := f.Direct.Get(&remaining, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); err != nil {
		t.Fatal(err)
	}
	spent := initial - remaining
	t.Logf("faults injected: %v; valid %d, ambiguous %d, failed %d; credits spent %d",
		injected, valid.Load(), ambiguous.Load(), failed.Load(), spent)
	if spent < valid.Load() || spent > valid.Load()+ambiguous.Load() {
		t.Fatalf("%d credits spent, want between %d (valid answers) and %d (valid + ambiguous): a spend was counted twice or lost silently",
			spent, valid.Load(), valid.Load()+ambiguous.Load())
	}
	waitIdle(t, f.Proxied)
}
