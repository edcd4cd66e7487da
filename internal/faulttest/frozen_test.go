package faulttest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// TestVerifyCacheServerFrozen: 4 goroutines verify a key on a Store with a
// verification cache (bound 300 ms) while the server is frozen (SIGSTOP)
// for three bounds. Until the bound has passed since the freeze, answers
// may come from memory; after it, none does: every call fails (the
// database cannot answer) and the cache's hits stop. After the thaw,
// answers come from memory again. (A call counts for the freeze when it
// was asked after the bound and returned before the thaw began.)
func TestVerifyCacheServerFrozen(t *testing.T) {
	const bound = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := ownServer(t, ctx, "frozen")
	db := openPool(t, faultConfig(t, srv.DSN("frozen")))
	migrate(t, db)
	store, err := keystore.New(db, keystore.WithVerifyCache(100, bound))
	if err != nil {
		t.Fatal(err)
	}
	key, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); store.VerifyCacheStats().Hits == 0; time.Sleep(time.Millisecond) {
		if _, err := store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key.Key}); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 10*bound {
			t.Fatalf("no answer from memory: %+v", store.VerifyCacheStats())
		}
	}

	var frozenAt, thawing atomic.Int64 // Unix ns; 0 until then
	var validAfterBound, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				asked := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
				v, err := store.VerifyKey(cctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key.Key})
				cancel()
				if f, th := frozenAt.Load(), thawing.Load(); f != 0 && asked.UnixNano() > f+int64(bound) && th == 0 {
					if err == nil && v.Valid {
						validAfterBound.Add(1)
					} else {
						failed.Add(1)
					}
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozenAt.Store(time.Now().UnixNano())
	time.Sleep(bound + 20*time.Millisecond)
	hitsAtBound := store.VerifyCacheStats().Hits
	time.Sleep(2 * bound)
	thawing.Store(time.Now().UnixNano())
	hitsBeforeThaw := store.VerifyCacheStats().Hits
	if err := srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	for store.VerifyCacheStats().Hits == hitsBeforeThaw && time.Since(thawed) < 30*time.Second {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	st := store.VerifyCacheStats()
	t.Logf("frozen for %v: %d calls after the bound failed, %d were valid; hits at the bound %d, before the thaw %d; back from memory %v after the thaw; %+v",
		thawed.Sub(time.Unix(0, frozenAt.Load())).Round(time.Millisecond), failed.Load(), validAfterBound.Load(),
		hitsAtBound, hitsBeforeThaw, time.Since(thawed).Round(time.Millisecond), st)
	if validAfterBound.Load() != 0 || hitsBeforeThaw != hitsAtBound {
		t.Errorf("answers from memory after the bound with the server frozen: %d valid calls, hits %d -> %d",
			validAfterBound.Load(), hitsAtBound, hitsBeforeThaw)
	}
	if failed.Load() == 0 {
		t.Error("no call was made after the bound while the server was frozen")
	}
	if st.Hits == hitsBeforeThaw {
		t.Error("no answer from memory after the thaw")
	}
}
