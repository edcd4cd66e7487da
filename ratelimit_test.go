package keystore_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// verifyAll runs n concurrent verifications of key through the stores in
// turn and counts the valid and the rate-limited answers; any other answer
// or an error fails the test.
func verifyAll(t *testing.T, stores []*keystore.Store, n int, req keystore.VerifyKeyRequest) (valid, limited int64) {
	t.Helper()
	var v, l atomic.Int64
	failOnErrors(t, parallel(n, func(i int) error {
		got, err := stores[i%len(stores)].VerifyKey(context.Background(), req)
		switch {
		case err != nil:
			return err
		case got.Valid:
			v.Add(1)
		case got.Code == keystore.CodeRateLimited:
			l.Add(1)
		default:
			return errors.New("unexpected code " + string(got.Code))
		}
		return nil
	}))
	return v.Load(), l.Load()
}

// One Store under a burst admits exactly the limit; a rate-limited call
// spends no credit; the next window admits again.
func TestRatelimitOneStoreExact(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 6, 1, 10, 0, 30, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits:    &keystore.Credits{Remaining: 1000},
		Ratelimits: []keystore.Ratelimit{{Name: "per-minute", Limit: 50, Duration: time.Minute, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	req := keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key}
	valid, limited := verifyAll(t, []*keystore.Store{s}, 200, req)
	if valid != 50 || limited != 150 {
		t.Fatalf("%d valid, %d rate limited of 200 on a limit of 50", valid, limited)
	}
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != 950 {
		t.Fatalf("%d credits left: rate-limited calls spent", n)
	}
	v, err := s.VerifyKey(ctx, req)
	if err != nil || v.Code != keystore.CodeRateLimited || len(v.RatelimitResults) != 1 {
		t.Fatalf("51st: %+v, %v", v, err)
	}
	r := v.RatelimitResults[0]
	if !r.Exceeded || r.Remaining != 0 || r.Limit != 50 || r.Identity || !r.Reset.Equal(time.Date(2027, 6, 1, 10, 1, 0, 0, time.UTC)) {
		t.Fatalf("result %+v", r)
	}
	if v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, NoSpend: true}); err != nil || !v.Valid || v.RatelimitResults != nil {
		t.Fatalf("NoSpend applies no ratelimit: %+v, %v", v, err)
	}
	clock.Set(time.Date(2027, 6, 1, 10, 1, 0, 0, time.UTC)) // the next window
	v, err = s.VerifyKey(ctx, req)
	if err != nil || !v.Valid || v.RatelimitResults[0].Remaining != 49 || v.RatelimitResults[0].Exceeded {
		t.Fatalf("next window: %+v, %v", v, err)
	}
}

// Four Stores on four pools, like four processes, never admit more than the
// limit together, and admit all of it when demand exceeds it.
func TestRatelimitFourStoresNeverOverLimit(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 6, 1, 10, 0, 0, 0, time.UTC)}
	dsn := keystoretest.DSN(t)
	var stores []*keystore.Store
	for range 4 {
		s, _ := storeOn(t, dsn, 16, keystore.WithClock(clock.Now))
		stores = append(stores, s)
	}
	c, err := stores[0].CreateKey(context.Background(), keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Ratelimits: []keystore.Ratelimit{{Name: "hour", Limit: 100, Duration: time.Hour, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	valid, limited := verifyAll(t, stores, 400, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
	if valid != 100 || limited != 300 {
		t.Fatalf("%d valid, %d rate limited of 400 through four Stores on a limit of 100", valid, limited)
	}
}

// An owner's limit is shared by all its keys; a key's limit of the same name
// wins over the owner's; requested limits apply at their cost; limits pass
// or fail together.
func TestRatelimitOwnerSharedAndRequested(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 6, 1, 10, 0, 0, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	var keys []keystore.CreatedKey
	for range 2 {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner"})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, c)
	}
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "owner",
		Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "owner-rpm", Limit: 30, Duration: time.Minute, AutoApply: true},
			{Name: "shared", Limit: 1, Duration: time.Minute, AutoApply: true}})}); err != nil {
		t.Fatal(err)
	}
	// Both keys have their own "shared" limit, which wins over the owner's
	// limit of 1.
	for _, k := range keys {
		if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: k.KeyID,
			Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "shared", Limit: 1000, Duration: time.Minute, AutoApply: true},
				{Name: "expensive", Limit: 10, Duration: time.Minute}})}); err != nil {
			t.Fatal(err)
		}
	}
	var valid atomic.Int64
	failOnErrors(t, parallel(100, func(i int) error {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: keys[i%2].Key})
		if v.Valid {
			valid.Add(1)
		}
		return err
	}))
	if valid.Load() != 30 {
		t.Fatalf("%d valid of 100 on two keys of an owner limited to 30", valid.Load())
	}
	for _, k := range keys {
		if n := count(t, db, `SELECT used FROM keystore_ratelimits WHERE subject = ? AND name = 'shared'`, k.KeyID); n > 1000 || n == 0 {
			t.Fatalf("key's own shared limit used %d", n)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_ratelimits WHERE subject = ? AND name = 'shared'`, keys[0].IdentityID); n != 0 {
		t.Fatalf("the owner's shadowed limit was applied")
	}

	// The owner's limit is spent for this minute; in the next, a requested
	// limit at cost 3 admits three calls of its 10, then fails, taking no
	// token from the owner's limit it passed.
	clock.Add(time.Minute)
	req := keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: keys[0].Key,
		Ratelimits: []keystore.RatelimitRequest{{Name: "expensive", Cost: 3}}}
	for i := range 4 {
		v, err := s.VerifyKey(ctx, req)
		if err != nil || v.Valid != (i < 3) || len(v.RatelimitResults) != 3 {
			t.Fatalf("call %d: %+v, %v", i, v, err)
		}
		for _, r := range v.RatelimitResults {
			if r.Name == "expensive" && (r.Remaining != []int64{7, 4, 1, 1}[i] || r.Exceeded != (i == 3) || r.Identity) {
				t.Fatalf("call %d: %+v", i, r)
			}
			if r.Name == "owner-rpm" && (r.Remaining != []int64{29, 28, 27, 27}[i] || !r.Identity) {
				t.Fatalf("call %d: %+v", i, r)
			}
		}
	}
	_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: keys[0].Key,
		Ratelimits: []keystore.RatelimitRequest{{Name: "nope"}}})
	var ve *keystore.ValidationError
	if !errors.As(err, &ve) || ve.Field != "Ratelimits[0].Name" {
		t.Fatalf("unknown requested limit: %v", err)
	}
}

// A verification whose limits need the database fails closed when the
// primary cannot be reached: an error, never VALID, even though the key was
// read (from the replica).
func TestRatelimitFailsClosed(t *testing.T) {
	good, db := newStore(t)
	ctx := context.Background()
	limited, err := good.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 100, Duration: time.Second, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	free, err := good.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := sqlx.Open("mysql", "root@tcp(127.0.0.1:1)/none?timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	s, err := keystore.New(dead, keystore.WithReplica(db))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: free.Key}); err != nil || !v.Valid {
		t.Fatalf("a key without limits, read from the replica: %+v, %v", v, err)
	}
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: limited.Key})
	if err == nil || v.Valid {
		t.Fatalf("a limited key with the primary down: %+v, %v; want an error", v, err)
	}
}

// A Store whose clock is behind adds to the window another Store opened
// rather than start its older one again: skewed clocks never reopen a window.
func TestRatelimitSkewedClocks(t *testing.T) {
	dsn := keystoretest.DSN(t)
	ahead := &fakeClock{t: time.Date(2027, 6, 1, 10, 1, 0, 0, time.UTC)}
	behind := &fakeClock{t: time.Date(2027, 6, 1, 10, 0, 59, 0, time.UTC)}
	a, _ := storeOn(t, dsn, 4, keystore.WithClock(ahead.Now))
	b, _ := storeOn(t, dsn, 4, keystore.WithClock(behind.Now))
	c, err := a.CreateKey(context.Background(), keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Ratelimits: []keystore.Ratelimit{{Name: "rpm", Limit: 10, Duration: time.Minute, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	req := keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key}
	valid := 0
	for i := range 40 {
		s := a
		if i%2 == 1 {
			s = b
		}
		v, err := s.VerifyKey(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if v.Valid {
			valid++
		}
	}
	if valid != 10 {
		t.Fatalf("%d valid through two Stores a second apart across a window boundary, limit 10", valid)
	}
}

// A limit whose Duration changes opens a new window at once: the count kept
// for the old Duration neither carries over nor blocks the key.
func TestRatelimitDurationChanged(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 6, 1, 10, 0, 0, 0, time.UTC)}
	s, _ := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Ratelimits: []keystore.Ratelimit{{Name: "r", Limit: 2, Duration: time.Second, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	req := keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key}
	codes := func() (out []keystore.VerificationCode) {
		for range 3 {
			v, err := s.VerifyKey(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, v.Code)
		}
		return out
	}
	want := []keystore.VerificationCode{keystore.CodeValid, keystore.CodeValid, keystore.CodeRateLimited}
	if got := codes(); !slices.Equal(got, want) {
		t.Fatalf("2 a second: %v", got)
	}
	for _, d := range []time.Duration{time.Minute, time.Second} {
		if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID,
			Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "r", Limit: 2, Duration: d, AutoApply: true}})}); err != nil {
			t.Fatal(err)
		}
		clock.Add(time.Second)
		if got := codes(); !slices.Equal(got, want) {
			t.Fatalf("after the Duration became %s: %v", d, got)
		}
	}
	_, err = s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key,
		Ratelimits: []keystore.RatelimitRequest{{Name: "r", Cost: 1 << 62}}})
	var ve *keystore.ValidationError
	if !errors.As(err, &ve) || ve.Field != "Ratelimits[0].Cost" {
		t.Fatalf("a cost past 2^53: %v", err)
	}
}
