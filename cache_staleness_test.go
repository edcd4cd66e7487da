package keystore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
)

// TestVerifyCacheStaleness measures the bound of WithVerifyCache: 4 Stores
// with caches, each on a pool of its own, verify keys in a loop while a
// fifth Store makes 1,000 random changes to them (the readers cycle
// through the keys, deleted ones included for a while): disable, enable, expire,
// delete, permission change, role added and role deleted, the owner's
// ratelimits. After each change, a Store without cache reads what the
// changed keys now verify as. Every state of a key differs from all its
// earlier ones (each change writes a new counter into the key's or the
// owner's meta, or adds or removes a new role), so an answer tells which
// state it shows.
//
// It requires that no answer shows a state that a change had replaced
// longer than the bound before the answer was asked for, and reports the
// longest any did, and the time from each change's return to the first
// answer that shows it (or a later state), the slowest of the 4 Stores,
// as p50, p99 and max.
func TestVerifyCacheStaleness(t *testing.T) {
	const (
		bound   = time.Second
		changes = 1000
		nKeys   = 24
		owners  = 6
		readers = 4
	)
	ctx := context.Background()
	dsn := keystoretest.DSN(t)
	writer, _ := storeOn(t, dsn, 4)
	truth, _ := storeOn(t, dsn, 4)
	var caching [readers]*keystore.Store
	for i := range caching {
		caching[i], _ = storeOn(t, dsn, 8, keystore.WithVerifyCache(10_000, bound))
	}

	// The keys, as slots: a deleted key's slot gets a new key.
	type state struct {
		print     string
		started   time.Time // of the change that made it
		returned  time.Time
		replaced  time.Time // when the change that replaced it returned; zero while current
		plaintext string
	}
	var mu sync.Mutex
	histories := map[string][]state{} // by plaintext
	plaintexts := make([]string, nKeys)
	deleted := map[string]time.Time{} // plaintext -> when deleted, for readers to go on asking a while
	keyIDs := make([]string, nKeys)
	ownerOf := make([]string, nKeys)
	rolesHeld := map[string][]int{} // role name -> slots holding it
	// An answer's state. An expiry is told by Expires, not by the code: a
	// key set to expire a millisecond ahead turns EXPIRED by the clock,
	// with no change to see.
	fingerprint := func(v keystore.Verification) string {
		code := v.Code
		if code == keystore.CodeExpired {
			code = keystore.CodeValid
		}
		return fmt.Sprint(code, v.KeyID, v.Expires != nil, v.Permissions, v.Roles, v.Meta, v.IdentityMeta, v.IdentityRatelimits)
	}
	// record reads the truth of the keys in slots after a change that
	// started at started and returned now.
	record := func(started time.Time, slots ...int) {
		returned := time.Now()
		for _, slot := range slots {
			p := plaintexts[slot]
			v, err := truth.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: p, NoSpend: true})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			h := histories[p]
			if n := len(h); n > 0 {
				if h[n-1].print == fingerprint(v) {
					mu.Unlock()
					continue // this change did not alter this key's answer
				}
				h[n-1].replaced = returned
			}
			histories[p] = append(h, state{print: fingerprint(v), started: started, returned: returned, plaintext: p})
			mu.Unlock()
		}
	}
	newKey := func(slot int) {
		ownerOf[slot] = fmt.Sprintf("owner%d", slot%owners)
		k, err := writer.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: ownerOf[slot],
			Meta: map[string]any{"n": 0}})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		plaintexts[slot], keyIDs[slot] = k.Key, k.KeyID
		mu.Unlock()
		record(time.Now(), slot)
	}
	for slot := range nKeys {
		newKey(slot)
	}

	// The readers: each goroutine verifies random keys and keeps, per key,
	// the runs of equal answers it saw.
	type run struct {
		print       string
		first, last time.Time // when the first and last call of the run were made
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	runs := make([]map[string][]run, readers) // reader -> plaintext -> runs
	var answers atomic.Int64
	for r, s := range caching {
		runs[r] = map[string][]run{}
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(r), uint64(g)))
				local := map[string][]run{}
				var cycle []string
				for !stop.Load() {
					if len(cycle) == 0 {
						// Every live key, and the keys deleted within
						// twice the bound, in random order.
						mu.Lock()
						cycle = slices.Clone(plaintexts)
						for p, at := range deleted {
							if time.Since(at) < 2*bound {
								cycle = append(cycle, p)
							}
						}
						mu.Unlock()
						rng.Shuffle(len(cycle), func(i, j int) { cycle[i], cycle[j] = cycle[j], cycle[i] })
					}
					p := cycle[0]
					cycle = cycle[1:]
					asked := time.Now()
					v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: p, NoSpend: true})
					if err != nil {
						t.Error(err)
						return
					}
					answers.Add(1)
					time.Sleep(100 * time.Microsecond) // leave the writer some CPU
					f, rs := fingerprint(v), local[p]
					if n := len(rs); n > 0 && rs[n-1].print == f {
						rs[n-1].last = asked
					} else {
						local[p] = append(rs, run{print: f, first: asked, last: asked})
					}
				}
				mu.Lock()
				for p, rs := range local {
					runs[r][p] = append(runs[r][p], rs...)
				}
				mu.Unlock()
			}()
		}
	}

	// The changes.
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := map[string]int{}
	for n := 1; n <= changes; n++ {
		slot := rng.IntN(nKeys)
		meta := keystore.Set(map[string]any{"n": n})
		update := func(req keystore.UpdateKeyRequest) {
			req.WorkspaceID, req.KeyID, req.Meta = "ws", keyIDs[slot], meta
			if _, err := writer.UpdateKey(ctx, req); err != nil {
				t.Fatalf("change %d: %v", n, err)
			}
		}
		started := time.Now()
		slots := []int{slot}
		var kind string
		switch rng.IntN(8) {
		case 0:
			kind = "disable"
			update(keystore.UpdateKeyRequest{Enabled: keystore.Set(false)})
		case 1:
			kind = "re-enable"
			update(keystore.UpdateKeyRequest{Enabled: keystore.Set(true), Expires: keystore.Null[time.Time]()})
		case 2:
			kind = "expire"
			update(keystore.UpdateKeyRequest{Expires: keystore.Set(time.Now().Add(time.Millisecond))})
		case 3:
			kind = "permission change"
			update(keystore.UpdateKeyRequest{Permissions: keystore.Set([]string{fmt.Sprintf("p.%d", n)})})
		case 4:
			kind = "owner's ratelimits"
			if _, err := writer.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: ownerOf[slot],
				Meta:       keystore.Set(map[string]any{"n": n}),
				Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "owner", Limit: int64(n), Duration: time.Minute}})}); err != nil {
				t.Fatalf("change %d: %v", n, err)
			}
			slots = nil
			for s := range nKeys {
				if ownerOf[s] == ownerOf[slot] {
					slots = append(slots, s)
				}
			}
		case 5:
			kind = "role added"
			role := fmt.Sprintf("r%d", n)
			if _, err := writer.CreateRole(ctx, "ws", role, []string{"p.role." + role}); err != nil {
				t.Fatal(err)
			}
			update(keystore.UpdateKeyRequest{AddRoles: []string{role}})
			rolesHeld[role] = append(rolesHeld[role], slot)
		case 6:
			kind = "role deleted"
			if len(rolesHeld) == 0 {
				continue
			}
			role := slices.Sorted(func(yield func(string) bool) {
				for r := range rolesHeld {
					if !yield(r) {
						return
					}
				}
			})[0]
			if err := writer.DeleteRole(ctx, "ws", role); err != nil {
				t.Fatal(err)
			}
			slots = rolesHeld[role]
			delete(rolesHeld, role)
		case 7:
			kind = "delete"
			if err := writer.DeleteKey(ctx, "ws", keyIDs[slot]); err != nil {
				t.Fatal(err)
			}
		}
		kinds[kind]++
		record(started, slots...)
		if kind == "delete" {
			mu.Lock()
			deleted[plaintexts[slot]] = time.Now()
			mu.Unlock()
			for r, held := range rolesHeld {
				rolesHeld[r] = slices.DeleteFunc(held, func(s int) bool { return s == slot })
			}
			newKey(slot)
		}
	}
	time.Sleep(bound + 100*time.Millisecond) // let every Store see the last changes
	stop.Store(true)
	wg.Wait()
	t.Logf("changes: %v; %d answers", kinds, answers.Load())

	for _, byKey := range runs {
		for _, rs := range byKey {
			slices.SortFunc(rs, func(a, b run) int { return a.first.Compare(b.first) })
		}
	}

	// Every answer shows a state that had not been replaced for longer
	// than the bound when the answer was asked for.
	var lags []time.Duration
	var longestStale time.Duration // the longest an older state was answered after a change returned
	violations := 0
	for p, h := range histories {
		index := map[string]int{}
		for i, st := range h {
			index[st.print] = i
		}
		for i := 1; i < len(h); i++ {
			var slowest time.Duration
			for r := range readers {
				seen := false
				for _, rn := range runs[r][p] {
					j, ok := index[rn.print]
					if !ok {
						t.Errorf("reader %d answered a state the key never had: %s", r, rn.print)
						continue
					}
					if j < i {
						longestStale = max(longestStale, rn.last.Sub(h[i].returned))
					}
					if j < i && rn.last.After(h[i].returned.Add(bound)) {
						violations++
						if violations <= 5 {
							t.Errorf("reader %d answered %q at %v, replaced by %q %v before",
								r, rn.print, rn.last.Format(time.StampMicro), h[i].print, rn.last.Sub(h[i].returned))
						}
					}
					if j >= i && !seen {
						seen = true
						slowest = max(slowest, rn.first.Sub(h[i].returned))
					}
				}
				if !seen {
					t.Errorf("reader %d never answered state %d of a key (%q)", r, i, h[i].print)
				}
			}
			lags = append(lags, slowest)
		}
	}
	slices.Sort(lags)
	if len(lags) == 0 {
		t.Fatal("no change was observed")
	}
	pct := func(q float64) time.Duration { return lags[int(q*float64(len(lags)-1))].Round(time.Millisecond) }
	t.Logf("%d states replaced; time from a change's return to its first answer in the slowest Store: p50 %v, p99 %v, max %v (bound %v)",
		len(lags), pct(0.5), pct(0.99), lags[len(lags)-1].Round(time.Millisecond), bound)
	t.Logf("the longest an older state was still answered after the change returned: %v", longestStale.Round(time.Millisecond))
	// That is the bound's test (a first answer can come late only because
	// no reader asked about the key sooner).
	if violations > 0 || longestStale > bound {
		t.Errorf("%d runs of answers contradicted a change older than the bound (longest %v)", violations, longestStale)
	}
	var hits int64
	for _, s := range caching {
		hits += s.VerifyCacheStats().Hits
	}
	if hits < answers.Load()/2 {
		t.Errorf("only %d of %d answers came from memory", hits, answers.Load())
	}
}
