package faulttest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/testutil"
)

// TestServerKilledMidLoad: 8 goroutines create keys while the server is
// killed with SIGKILL and restarted on the same data directory (InnoDB crash
// recovery). The Store and its pool are kept throughout.
//
//   - Restarted within the Store's settle timeout: a call whose commit was
//     lost settles it after the restart, so every call returns success or
//     a definite error (retries exhausted, nothing written), never
//     ErrAmbiguousCommit.
//   - Restarted after it: such a call returns ErrAmbiguousCommit with the
//     receipt and the key's id, and Store.Settle, after the restart, says
//     exactly whether that key is there.
//
// Either way, after the restart every call succeeds, every key a call
// reported as created survived the crash, the keys are exactly those, and
// nothing is duplicated or half-written.
//
// The test starts a server of its own, so that killing it disturbs no other
// test. The pool dials whatever address the server has now, in case the
// restart had to move to another port.
func TestServerKilledMidLoad(t *testing.T) {
	t.Run("restart within the settle timeout", func(t *testing.T) {
		crashUnderLoad(t, keystore.DefaultSettleTimeout, 300*time.Millisecond)
	})
	t.Run("restart after the settle timeout", func(t *testing.T) {
		crashUnderLoad(t, 100*time.Millisecond, 1500*time.Millisecond)
	})
}

// crashUnderLoad runs TestServerKilledMidLoad with a Store whose settle
// timeout is settle and a server down for at least down.
func crashUnderLoad(t *testing.T, settle, down time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := ownServer(t, ctx, "crash")

	cfg := faultConfig(t, srv.DSN("crash"))
	var dialer net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, srv.Addr())
	}
	db := openPool(t, cfg)
	migrate(t, db)
	w := &workload{workers: 8, workspace: "ws_crash", want: map[string]expectation{},
		ratelimits: []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute}}}
	rl := ratelimitsJSON(t, db, w.ratelimits)
	for i := range 1000 {
		for j := range 3 {
			ext, perms := w.request(i, j)
			w.want[ext] = expectation{Permissions: perms, Ratelimits: rl}
		}
	}

	var retries atomic.Int64
	settles := &testutil.SettleLog{}
	store, err := keystore.New(db, keystore.WithSettleTimeout(settle), keystore.WithLogger(slog.New(settles)), keystore.WithRetryOptions(
		keystore.OnRetry(func(int, error) { retries.Add(1) })))
	if err != nil {
		t.Fatal(err)
	}

	// Phases: 0 before the kill, 1 from the kill until the restart
	// returned, 2 after it. A call that started and ended in phase 0, or
	// started in phase 2, is counted as clean (index 0 and 2); any other is
	// counted as meeting the outage (index 1).
	var phase atomic.Int32
	var mu sync.Mutex
	counts := [3]map[outcome]int{{}, {}, {}}
	var keyIDs []string
	var unknown []*keystore.AmbiguousCommitError
	var samples []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for wk := range w.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				ext, perms := w.request(i%1000, (wk+i)%3)
				k, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
					WorkspaceID: w.workspace, KeySpaceID: "ks", Name: ext,
					ExternalID: ext, Permissions: perms, Ratelimits: w.ratelimits,
				})
				o := classify(err)
				if p == 0 && phase.Load() != 0 {
					p = 1
				}
				mu.Lock()
				counts[p][o]++
				var u *keystore.AmbiguousCommitError
				switch {
				case o == succeeded:
					keyIDs = append(keyIDs, k.KeyID)
				case o == ambiguous && errors.As(err, &u):
					unknown = append(unknown, u)
				case o == unclassified && len(samples) < 5:
					samples = append(samples, err.Error())
				}
				mu.Unlock()
			}
		}()
	}

	time.Sleep(500 * time.Millisecond)
	phase.Store(1)
	srv.Kill()
	killedAt := time.Now()
	time.Sleep(down)
	if err := srv.Restart(ctx); err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("restart: %v", err)
	}
	t.Logf("server down for %v", time.Since(killedAt).Round(time.Millisecond))
	phase.Store(2)
	// Calls that started during the outage may still be retrying; give
	// the ones started after the restart time to run.
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("the workload hit its deadline: a call hung")
	}

	for p, name := range []string{"before the kill", "meeting the outage", "after the restart"} {
		c := counts[p]
		t.Logf("%s: %d succeeded, %d ambiguous commits, %d retries exhausted, %d unclassified",
			name, c[succeeded], c[ambiguous], c[exhausted], c[unclassified])
	}
	t.Logf("retries: %d; lost commits settled by the calls: %d committed, %d not", retries.Load(),
		settles.Committed.Load(), settles.NotCommitted.Load())
	for _, s := range samples {
		t.Errorf("unclassified error: %s", s)
	}
	for _, p := range []int{0, 2} {
		c := counts[p]
		if c[succeeded] == 0 || c[ambiguous]+c[exhausted]+c[unclassified] != 0 {
			t.Errorf("calls %s (the server was up all along): %v, want only successes", []string{"before the kill", "", "after the restart"}[p], c)
		}
	}
	if settle == keystore.DefaultSettleTimeout && len(unknown) > 0 {
		t.Errorf("%d calls returned ErrAmbiguousCommit although the server was back within the settle timeout", len(unknown))
	}

	ids := checkInvariants(t, db, w.workspace, w.want)
	for _, id := range keyIDs {
		if !ids[id] {
			t.Errorf("key %s: CreateKey succeeded but the key did not survive the crash", id)
		}
	}
	// Each unknown outcome, settled now, says exactly whether its key is
	// there.
	settledCommitted := 0
	for _, u := range unknown {
		if u.Receipt == nil || u.KeyID == "" {
			t.Errorf("ErrAmbiguousCommit without receipt or key id: %v", u)
			continue
		}
		committed, err := store.Settle(ctx, *u.Receipt)
		if err != nil {
			t.Errorf("Settle %s: %v", u.Receipt.ID, err)
			continue
		}
		if committed != ids[u.KeyID] {
			t.Errorf("Settle of key %s: committed %v, the key is there: %v", u.KeyID, committed, ids[u.KeyID])
		}
		if committed {
			settledCommitted++
		}
	}
	t.Logf("ambiguous commits settled after the restart: %d committed, %d not", settledCommitted, len(unknown)-settledCommitted)
	if want := len(keyIDs) + settledCommitted; len(ids) != want {
		t.Errorf("%d keys in the database, want %d (successes, and ambiguous commits settled as committed)", len(ids), want)
	}
	waitIdle(t, db)
}
