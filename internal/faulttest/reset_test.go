package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// workload is a concurrent CreateKey workload: workers goroutines make calls
// calls each. Call i of worker w is for external id ext-<i/5>-<(w+i)%3>, so
// every few calls all workers race on three new external ids at once, and
// each group of external ids also brings new permissions.
type workload struct {
	workers, calls int
	workspace      string
	want           map[string]expectation
	ratelimits     []keystore.Ratelimit
}

func newWorkload(t *testing.T, workers, calls int, ratelimitsJSON string) *workload {
	w := &workload{workers: workers, calls: calls, workspace: "ws_" + t.Name(), want: map[string]expectation{}}
	w.ratelimits = []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute}, {Name: "tokens", Limit: 5000, Duration: time.Hour, AutoApply: true}}
	for i := range calls {
		for j := range 3 {
			ext, perms := w.request(i, j)
			w.want[ext] = expectation{Permissions: perms, Ratelimits: ratelimitsJSON}
		}
	}
	return w
}

// request returns the external id and sorted permissions of slot j of call i.
// Slot 2 has none, so that on MariaDB its keys are written in one statement
// (see onetrip.go) and the faults hit that path too.
func (w *workload) request(i, j int) (string, []string) {
	g := i / 5
	ext := fmt.Sprintf("ext-%02d-%d", g, j)
	if j == 2 {
		return ext, nil
	}
	perms := []string{"common.read", fmt.Sprintf("group%02d.write", g), fmt.Sprintf("slot%d.admin", j)}
	sort.Strings(perms)
	return ext, perms
}

// tally is what a workload run returned.
type tally struct {
	mu      sync.Mutex
	counts  map[outcome]int
	keyIDs  []string // of the successful calls
	samples []string // of unclassified errors
	connErr int      // exhausted retries whose last cause was a connection error
}

// run runs the workload against store under ctx and returns the tally.
func (w *workload) run(ctx context.Context, store *keystore.Store) *tally {
	tl := &tally{counts: map[outcome]int{}}
	var wg sync.WaitGroup
	for wk := range w.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range w.calls {
				ext, perms := w.request(i, (wk+i)%3)
				k, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
					WorkspaceID: w.workspace, KeySpaceID: "ks", Prefix: "ft", Name: ext,
					ExternalID: ext, Permissions: perms, Ratelimits: w.ratelimits,
				})
				o := classify(err)
				tl.mu.Lock()
				tl.counts[o]++
				switch o {
				case succeeded:
					tl.keyIDs = append(tl.keyIDs, k.KeyID)
				case exhausted:
					if isConnectionError(err) {
						tl.connErr++
					}
				case unclassified:
					if len(tl.samples) < 5 {
						tl.samples = append(tl.samples, err.Error())
					}
				}
				tl.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return tl
}

// check asserts the invariants on the server and the tally against them.
func (w *workload) check(t *testing.T, f *fixture, tl *tally) {
	t.Helper()
	for _, s := range tl.samples {
		t.Errorf("unclassified error: %s", s)
	}
	if n := tl.counts[unclassified]; n > 0 {
		t.Errorf("%d calls returned an error that is neither ErrAmbiguousCommit nor ErrRetriesExhausted", n)
	}
	ids := checkInvariants(t, f.Direct, w.workspace, w.want)
	for _, id := range tl.keyIDs {
		if !ids[id] {
			t.Errorf("key %s: CreateKey succeeded but the key is not in the database", id)
		}
	}
	ok, amb := tl.counts[succeeded], tl.counts[ambiguous]
	if amb > 0 {
		t.Errorf("%d calls returned ErrAmbiguousCommit while the server was up", amb)
	}
	if len(ids) != ok {
		t.Errorf("%d keys in the database, %d calls succeeded", len(ids), ok)
	}
	t.Logf("keys in the database: %d (successes %d, ambiguous %d)", len(ids), ok, amb)
}

// TestConnectionResetsUnderLoad runs 16 goroutines of CreateKey through a
// proxy that keeps breaking connections: resets (RST) in either direction at
// random points of the conversation, including around COMMIT, half-open
// links that swallow what is sent until the DSN's readTimeout ends them, and
// the proxy going down and up. Afterwards, on the server directly: nothing
// duplicated or half-written, every success durable, every failure
// classified, no ErrAmbiguousCommit (the server stayed up, so every lost
// commit was settled), and exactly as many keys as successes.
func TestConnectionResetsUnderLoad(t *testing.T) {
	f := newFixture(t)
	w := newWorkload(t, 16, 50, "")
	w = newWorkload(t, 16, 50, ratelimitsJSON(t, f.Direct, w.ratelimits))

	var retries, mostRetries atomic.Int64
	store, err := keystore.New(f.Proxied, keystore.WithRetryOptions(
		keystore.OnRetry(func(attempt int, _ error) {
			retries.Add(1)
			for m := mostRetries.Load(); int64(attempt) > m && !mostRetries.CompareAndSwap(m, int64(attempt)); m = mostRetries.Load() {
			}
		})))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan struct{})
	faults := make(chan map[string]int, 1)
	go func() { faults <- breakConnections(t, f, done) }()

	start := time.Now()
	tl := w.run(ctx, store)
	close(done)
	injected := <-faults
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("the workload hit its 90s deadline: a call hung")
	}
	t.Logf("%d calls in %v; faults injected: %v; exhausted retries ending on a connection error: %d",
		w.workers*w.calls, elapsed.Round(time.Millisecond), injected, tl.connErr)
	report(t, tl.counts, retries.Load())
	t.Logf("at most %d retries in one call (budget %d attempts)", mostRetries.Load(), keystore.DefaultMaxAttempts)
	w.check(t, f, tl)
	waitIdle(t, f.Proxied)
}

// breakConnections injects one fault after another until done is closed,
// with calm gaps between them, and returns how many of each it injected.
func breakConnections(t *testing.T, f *fixture, done <-chan struct{}) map[string]int {
	injected := map[string]int{}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	pause := func(d time.Duration) bool {
		select {
		case <-done:
			return false
		case <-time.After(d):
			return true
		}
	}
	for n := 0; ; n++ {
		if !pause(time.Duration(20+rng.IntN(60)) * time.Millisecond) {
			return injected
		}
		var kind string
		switch n % 4 {
		case 0, 1: // reset after 0-5 ms, on about half the live links
			stream := []string{"upstream", "downstream"}[rng.IntN(2)]
			kind = "reset_peer/" + stream
			addToxic(t, f.Proxy, toxic{Name: "fault", Type: "reset_peer", Stream: stream, Toxicity: 0.5,
				Attributes: map[string]any{"timeout": rng.IntN(6)}})
			pause(time.Duration(10+rng.IntN(30)) * time.Millisecond)
			removeToxic(t, f.Proxy, "fault")
		case 2: // half-open: what is sent in this window is lost, the link stays open
			stream := []string{"upstream", "downstream"}[rng.IntN(2)]
			kind = "timeout/" + stream
			addToxic(t, f.Proxy, toxic{Name: "fault", Type: "timeout", Stream: stream, Toxicity: 0.3,
				Attributes: map[string]any{"timeout": 0}})
			pause(time.Duration(5+rng.IntN(20)) * time.Millisecond)
			removeToxic(t, f.Proxy, "fault")
		case 3: // the proxy goes down (every link closed, connects refused) and up
			kind = "down"
			f.Proxy.Stop()
			pause(time.Duration(10+rng.IntN(40)) * time.Millisecond)
			if err := f.Proxy.Start(); err != nil {
				t.Errorf("toxiproxy restart: %v", err)
				return injected
			}
		}
		injected[kind]++
	}
}
