package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

func TestDeleteIdentity(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	keys := createKeys(t, s, 2, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
	keep := createKeys(t, s, 1, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "v"})
	identity, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "u",
		Meta:       keystore.Set(map[string]any{"plan": "pro"}),
		Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "rps", Limit: 5, Duration: time.Second}})})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, "ws", keys[1]); err != nil {
		t.Fatal(err)
	}

	if err := s.DeleteIdentity(ctx, "ws", "u"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindIdentity(ctx, "ws", "u"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("FindIdentity after delete: %v, want ErrNotFound", err)
	}
	// The keys stay, without an owner; their rows keep the old id as history.
	k, err := s.GetKey(ctx, "ws", keys[0])
	if err != nil {
		t.Fatal(err)
	}
	if k.IdentityID != "" || k.ExternalID != "" {
		t.Fatalf("key still owned: %q %q", k.IdentityID, k.ExternalID)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE identity_id = ?`, identity.ID); n != 2 {
		t.Fatalf("%d keys keep the deleted identity's id, want 2", n)
	}
	if page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", ExternalID: "u"}); err != nil || len(page.Items) != 0 {
		t.Fatalf("ListKeys of the deleted identity: %d keys, %v; want none", len(page.Items), err)
	}
	if k, err := s.GetKey(ctx, "ws", keep[0]); err != nil || k.ExternalID != "v" {
		t.Fatalf("another identity's key changed: %+v, %v", k, err)
	}
	// The row stays, deleted; its ratelimits go.
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE id = ? AND live IS NULL AND deleted_at IS NOT NULL`, identity.ID); n != 1 {
		t.Fatalf("%d deleted rows for the identity, want 1", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE id = ? AND ratelimits IS NOT NULL`, identity.ID); n != 0 {
		t.Fatalf("%d ratelimits left for the deleted identity", n)
	}
	// Deleting it again, or an identity that never existed, is ErrNotFound
	// and writes nothing.
	before := rowsInAllTables(t, db)
	for _, ext := range []string{"u", "never"} {
		if err := s.DeleteIdentity(ctx, "ws", ext); !errors.Is(err, keystore.ErrNotFound) {
			t.Fatalf("DeleteIdentity(%s): %v, want ErrNotFound", ext, err)
		}
	}
	if err := s.DeleteIdentity(ctx, "ws", "u "); !errors.Is(err, keystore.ErrInvalidInput) {
		t.Fatalf("DeleteIdentity with a trailing space: %v, want ErrInvalidInput", err)
	}
	if after := rowsInAllTables(t, db); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("failed deletes wrote rows: before %v, after %v", before, after)
	}
	want := []string{"key.create", "identity.create", "key.create", "key.create", "identity.create",
		"identity.update", "key.delete", "identity.delete"}
	if got := events(t, db, "ws"); !slices.Equal(got, want) {
		t.Fatalf("events\n%v\nwant\n%v", got, want)
	}
}

// An external id can be deleted and created again any number of times: one
// live identity at a time, every deleted one kept.
func TestRecreateIdentityAfterDelete(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	var seen []string
	for round := range 3 {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if slices.Contains(seen, c.IdentityID) {
			t.Fatalf("round %d: identity %s reused after deletion", round, c.IdentityID)
		}
		seen = append(seen, c.IdentityID)
		if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'u' AND live = 1`); n != 1 {
			t.Fatalf("round %d: %d live identities, want 1", round, n)
		}
		if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'u' AND live IS NULL`); n != round {
			t.Fatalf("round %d: %d deleted identities, want %d", round, n, round)
		}
		if err := s.DeleteIdentity(ctx, "ws", "u"); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'u' AND live IS NULL`); n != 3 {
		t.Fatalf("%d deleted identities, want 3", n)
	}
	if page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil || len(page.Items) != 3 {
		t.Fatalf("ListKeys: %d keys, %v; want 3", len(page.Items), err)
	} else {
		for _, k := range page.Items {
			if k.IdentityID != "" || k.ExternalID != "" {
				t.Fatalf("key %s still reads as owned by %s/%s", k.ID, k.IdentityID, k.ExternalID)
			}
		}
	}
	// EnsureIdentity creates the fourth.
	identity, err := s.EnsureIdentity(ctx, "ws", "u")
	if err != nil || slices.Contains(seen, identity.ID) {
		t.Fatalf("EnsureIdentity after deletes: %+v, %v", identity, err)
	}
}

// A Store remembers which identity it linked keys of an externalID to. When
// another process deleted and re-created that identity, the next key goes
// to the live one all the same.
func TestStaleIdentityHint(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	other, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteIdentity(ctx, "ws", "u"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the identity is created anew, then found
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
		if err != nil {
			t.Fatal(err)
		}
		live, err := s.FindIdentity(ctx, "ws", "u")
		if err != nil {
			t.Fatal(err)
		}
		if c.IdentityID == first.IdentityID || c.IdentityID != live.ID {
			t.Fatalf("key %d after the delete went to identity %s; deleted %s, live %s", i, c.IdentityID, first.IdentityID, live.ID)
		}
		if k, err := s.GetKey(ctx, "ws", c.KeyID); err != nil || k.ExternalID != "u" {
			t.Fatalf("key %d reads back as owned by %q, %v", i, k.ExternalID, err)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE identity_id = ?`, first.IdentityID); n != 1 {
		t.Fatalf("%d keys on the deleted identity, want 1", n)
	}
	// The attempt on the deleted identity (on MariaDB, a block stopped
	// when its INSERT ... SELECT found no live owner) left no event.
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'key.create'`); n != 3 {
		t.Fatalf("%d key.create events for 3 keys", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'key.create' AND identity_id = ?`, first.IdentityID); n != 1 {
		t.Fatalf("%d key.create events name the deleted identity, want 1", n)
	}
	// UpdateKey's link reads a hinted owner by its id: deleted again, the
	// owner is created anew there too, then found.
	seen, err := s.FindIdentity(ctx, "ws", "u")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteIdentity(ctx, "ws", "u"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: first.KeyID, ExternalID: keystore.Set("u")})
		if err != nil {
			t.Fatal(err)
		}
		live, err := s.FindIdentity(ctx, "ws", "u")
		if err != nil {
			t.Fatal(err)
		}
		if k.IdentityID == seen.ID || k.IdentityID != live.ID || k.ExternalID != "u" {
			t.Fatalf("link %d after the delete went to identity %s (%q); deleted %s, live %s", i, k.IdentityID, k.ExternalID, seen.ID, live.ID)
		}
	}
}

func TestUpdateIdentity(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	tick := func() { mu.Lock(); now = now.Add(time.Minute); mu.Unlock() }
	s, db := newStore(t, keystore.WithClock(clock))
	ctx := context.Background()
	created, err := s.EnsureIdentity(ctx, "ws", "u")
	if err != nil {
		t.Fatal(err)
	}
	tick()
	rls := []keystore.Ratelimit{{Name: "tokens", Limit: 100, Duration: time.Hour, AutoApply: true},
		{Name: "rps", Limit: 10, Duration: time.Second}}
	got, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "u",
		Meta: keystore.Set(map[string]any{"plan": "pro", "seats": 3.0}), Ratelimits: keystore.Set(rls)})
	if err != nil {
		t.Fatal(err)
	}
	want := keystore.Identity{ID: created.ID, WorkspaceID: "ws", ExternalID: "u",
		Meta: map[string]any{"plan": "pro", "seats": 3.0}, Ratelimits: []keystore.Ratelimit{rls[1], rls[0]},
		CreatedAt: created.CreatedAt, UpdatedAt: now}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("UpdateIdentity returned\n%+v\nwant\n%+v", got, want)
	}
	for name, read := range map[string]func() (keystore.Identity, error){
		"FindIdentity":   func() (keystore.Identity, error) { return s.FindIdentity(ctx, "ws", "u") },
		"EnsureIdentity": func() (keystore.Identity, error) { return s.EnsureIdentity(ctx, "ws", "u") },
	} {
		if found, err := read(); err != nil || fmt.Sprintf("%+v", found) != fmt.Sprintf("%+v", want) {
			t.Fatalf("%s returned\n%+v (%v)\nwant\n%+v", name, found, err, want)
		}
	}
	// Unset fields stay; Null clears Meta; an empty set clears ratelimits.
	got, err = s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "u",
		Ratelimits: keystore.Set(rls[:1])})
	if err != nil || len(got.Meta) != 2 || len(got.Ratelimits) != 1 || got.Ratelimits[0].Name != "tokens" {
		t.Fatalf("partial update: %+v, %v", got, err)
	}
	got, err = s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "u",
		Meta: keystore.Null[map[string]any](), Ratelimits: keystore.Set([]keystore.Ratelimit{})})
	if err != nil || got.Meta != nil || got.Ratelimits != nil {
		t.Fatalf("clearing update: %+v, %v", got, err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE ratelimits IS NOT NULL`); n != 0 {
		t.Fatalf("%d identity ratelimits left after clearing", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE meta IS NULL`); n != 1 {
		t.Fatalf("meta not cleared in the row")
	}

	// A missing identity and invalid requests write nothing.
	before := rowsInAllTables(t, db)
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "nobody",
		Meta: keystore.Set(map[string]any{"a": 1})}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("UpdateIdentity of a missing identity: %v, want ErrNotFound", err)
	}
	for field, req := range map[string]keystore.UpdateIdentityRequest{
		"ExternalID": {WorkspaceID: "ws"},
		"Meta":       {WorkspaceID: "ws", ExternalID: "u", Meta: keystore.Set(map[string]any{"x": strings.Repeat("y", 65<<10)})},
		"Ratelimits[1].Name": {WorkspaceID: "ws", ExternalID: "u",
			Ratelimits: keystore.Set([]keystore.Ratelimit{rls[0], rls[0]})},
	} {
		_, err := s.UpdateIdentity(ctx, req)
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != field {
			t.Errorf("UpdateIdentity: %v, want a ValidationError for %s", err, field)
		}
	}
	if after := rowsInAllTables(t, db); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("failed updates wrote rows: before %v, after %v", before, after)
	}
	// One identity.create (the second EnsureIdentity created nothing) and
	// one identity.update per successful update.
	want2 := []string{"identity.create", "identity.update", "identity.update", "identity.update"}
	if got := events(t, db, "ws"); !slices.Equal(got, want2) {
		t.Fatalf("events %v, want %v", got, want2)
	}
}

func TestListIdentities(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var want []string
	for i := range 23 {
		identity, err := s.EnsureIdentity(ctx, "ws", fmt.Sprintf("user-%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, identity.ID)
	}
	for _, ext := range []string{"gone-1", "gone-2"} {
		_, err := s.EnsureIdentity(ctx, "ws", ext)
		must(t, err)
		must(t, s.DeleteIdentity(ctx, "ws", ext))
	}
	if _, err := s.EnsureIdentity(ctx, "other-ws", "user-00"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "user-00",
		Meta:       keystore.Set(map[string]any{"k": "v"}),
		Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "r", Limit: 1, Duration: time.Second}})}); err != nil {
		t.Fatal(err)
	}
	var got []string
	var sizes []int
	req := keystore.ListIdentitiesRequest{WorkspaceID: "ws", Limit: 10}
	for {
		page, err := s.ListIdentities(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if req.Cursor == "" && (page.Items[0].Meta["k"] != "v" || len(page.Items[0].Ratelimits) != 1) {
			t.Fatalf("listed identity without its meta or ratelimits: %+v", page.Items[0])
		}
		sizes = append(sizes, len(page.Items))
		for _, identity := range page.Items {
			got = append(got, identity.ID)
		}
		if page.NextCursor == "" {
			break
		}
		req.Cursor = page.NextCursor
	}
	if !slices.Equal(sizes, []int{10, 10, 3}) || !slices.Equal(got, want) {
		t.Fatalf("listed %v in pages %v, want %v", got, sizes, want)
	}
}

// Keys are created for one external id while it is deleted again and again,
// paced (deleters pause 50 ms) and in a tight loop: every CreateKey
// succeeds, at most one identity of it is live at any time, no key reads as
// owned by a deleted identity, and every call that succeeded left exactly
// its rows and events.
func TestConcurrentDeleteAndRecreateIdentity(t *testing.T) {
	duration := 2 * time.Second
	if short() {
		duration = 700 * time.Millisecond
	}
	for name, pause := range map[string]time.Duration{"paced": 50 * time.Millisecond, "tight loop": 0} {
		t.Run(name, func(t *testing.T) { deleteWhileCreating(t, duration, pause) })
	}
}

// deleteWhileCreating runs 16 CreateKey loops and 2 DeleteIdentity loops on
// one external id, and a sampler of its live identities, for duration. It
// fails the test on any error and any broken invariant.
func deleteWhileCreating(t *testing.T, duration, pause time.Duration) {
	var retries, deadlocks, mostRetries atomic.Int64
	s, db := newStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(attempt int, err error) {
		retries.Add(1)
		for m := mostRetries.Load(); int64(attempt) > m && !mostRetries.CompareAndSwap(m, int64(attempt)); m = mostRetries.Load() {
		}
		if keystore.IsDeadlock(err) {
			deadlocks.Add(1)
		}
	})))
	ctx := context.Background()
	const creators, deleters = 16, 2
	stop := make(chan struct{})
	time.AfterFunc(duration, func() { close(stop) })
	var createdKeys, permissionLinks, deletes, maxLive atomic.Int64
	errs := parallel(creators+deleters+1, func(i int) error {
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			switch {
			case i < creators:
				// Half the creators send no permissions: on MariaDB their
				// keys go in one round trip (onetrip.go).
				req := keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "x"}
				if i%2 == 0 {
					req.Permissions = []string{"p"}
				}
				c, err := s.CreateKey(ctx, req)
				if err != nil {
					return fmt.Errorf("CreateKey: %w", err)
				}
				if c.IdentityID == "" {
					return errors.New("CreateKey returned no identity")
				}
				createdKeys.Add(1)
				if i%2 == 0 {
					permissionLinks.Add(1)
				}
			case i < creators+deleters:
				err := s.DeleteIdentity(ctx, "ws", "x")
				if err != nil && !errors.Is(err, keystore.ErrNotFound) {
					return fmt.Errorf("DeleteIdentity: %w", err)
				}
				if err == nil {
					deletes.Add(1)
				}
				time.Sleep(pause)
			default:
				var live int64
				if err := db.Get(&live, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'x' AND live = 1`); err != nil {
					return err
				}
				if live > maxLive.Load() {
					maxLive.Store(live)
				}
			}
		}
	})
	t.Logf("%d keys created, %d identities deleted; %d retries, %d of them deadlocks; at most %d retries in one call",
		createdKeys.Load(), deletes.Load(), retries.Load(), deadlocks.Load(), mostRetries.Load())
	checkIdentityInvariants(t, s, db, createdKeys.Load(), permissionLinks.Load(), deletes.Load(), maxLive.Load())
	checkOwnerCopies(t, db)
	failOnErrors(t, errs)
	if deletes.Load() < 5 || createdKeys.Load() < 50 {
		t.Fatalf("too little contention to prove anything: %d deletes, %d keys", deletes.Load(), createdKeys.Load())
	}
}

func checkIdentityInvariants(t *testing.T, s *keystore.Store, db *sqlx.DB, createdKeys, permissionLinks, deletes, maxLive int64) {
	t.Helper()
	if maxLive > 1 {
		t.Errorf("%d live identities for x seen at once", maxLive)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'x' AND live = 1`); n > 1 {
		t.Errorf("%d live identities for x, want at most 1", n)
	}
	// No key reads as owned by a deleted identity: each is unowned or owned
	// by the live identity of x.
	live, _ := s.FindIdentity(context.Background(), "ws", "x")
	owned := 0
	for req := (keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks", Limit: 1000}); ; {
		page, err := s.ListKeys(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page.Items {
			if k.IdentityID != "" && (k.IdentityID != live.ID || k.ExternalID != "x") {
				t.Errorf("key %s reads as owned by %s/%q, not the live identity %q", k.ID, k.IdentityID, k.ExternalID, live.ID)
			}
			if k.IdentityID != "" {
				owned++
			}
		}
		if req.Cursor = page.NextCursor; req.Cursor == "" {
			break
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE identity_id = ?`, live.ID); n != owned {
		t.Errorf("%d keys read as owned by the live identity, %d are linked to it", owned, n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys k LEFT JOIN keystore_identities i ON i.id = k.identity_id
		WHERE k.identity_id IS NOT NULL AND i.id IS NULL`); n != 0 {
		t.Errorf("%d keys point at a missing identity", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); int64(n) != createdKeys {
		t.Errorf("%d keys stored, %d CreateKey calls succeeded", n, createdKeys)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_key_permissions`); int64(n) != permissionLinks {
		t.Errorf("%d permission links, %d keys created with the permission", n, permissionLinks)
	}
	// Every change left exactly one event: one identity.delete per
	// successful delete, one identity.create per identity row.
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE live IS NULL`); int64(n) != deletes {
		t.Errorf("%d deleted identity rows, %d successful deletes", n, deletes)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'identity.delete'`); int64(n) != deletes {
		t.Errorf("%d identity.delete events, %d deletes", n, deletes)
	}
	if n, want := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'identity.create'`),
		count(t, db, `SELECT COUNT(*) FROM keystore_identities`); n != want {
		t.Errorf("%d identity.create events, %d identities", n, want)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'key.create'`); int64(n) != createdKeys {
		t.Errorf("%d key.create events, %d keys", n, createdKeys)
	}
	// Each names its key and the identity the key was linked to (since
	// unlinked, if that one was deleted).
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events e LEFT JOIN keystore_keys k ON k.id = e.key_id
		WHERE e.event = 'key.create' AND (k.id IS NULL OR e.identity_id IS NULL OR e.identity_id <> COALESCE(k.identity_id, e.identity_id))`); n != 0 {
		t.Errorf("%d key.create events name no key, no identity, or another identity than their key's", n)
	}
}

// UpdateIdentity racing keys being created for, and linked to, the same
// identity: every key ends with the identity's final meta and ratelimits,
// and deleting it then leaves every key unowned.
func TestUpdateIdentityRacingKeys(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if _, err := s.EnsureIdentity(ctx, "ws", "busy"); err != nil {
		t.Fatal(err)
	}
	unowned := make([]string, 16)
	for i := range unowned {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
		if err != nil {
			t.Fatal(err)
		}
		unowned[i] = c.KeyID
	}
	failOnErrors(t, parallel(40, func(i int) error {
		switch {
		case i < 8: // updaters
			_, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "busy",
				Meta:       keystore.Set(map[string]any{"round": i}),
				Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "rpm", Limit: int64(i + 1), Duration: time.Minute}})})
			return err
		case i < 24: // creators
			_, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "busy"})
			return err
		default: // linkers
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: unowned[i-24], ExternalID: keystore.Set("busy")})
			return err
		}
	}))
	checkOwnerCopies(t, db)
	identity, err := s.FindIdentity(ctx, "ws", "busy")
	if err != nil {
		t.Fatal(err)
	}
	page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", ExternalID: "busy", Limit: 100})
	if err != nil || len(page.Items) != 32 {
		t.Fatalf("ListKeys of the identity: %d keys, %v; want 32", len(page.Items), err)
	}
	for _, k := range page.Items {
		got, err := s.GetKey(ctx, "ws", k.ID)
		if err != nil || got.ExternalID != "busy" || got.IdentityID != identity.ID {
			t.Fatalf("key %s reads as owned by %q/%q, %v", k.ID, got.ExternalID, got.IdentityID, err)
		}
	}
	if err := s.DeleteIdentity(ctx, "ws", "busy"); err != nil {
		t.Fatal(err)
	}
	checkOwnerCopies(t, db)
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE owner_external_id IS NOT NULL`); n != 0 {
		t.Fatalf("%d keys still read as owned after the delete", n)
	}
}
