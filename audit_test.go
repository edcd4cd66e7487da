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

// A CreateKey whose transaction had to run again leaves exactly one key and
// one audit event; the actor comes from the context.
func TestAuditEventOncePerRetriedMutation(t *testing.T) {
	// Lock waits time out after a second, so the blocked CreateKey below
	// gets 1205 and is retried.
	var retries atomic.Int32
	s, db := storeOn(t, keystoretest.DSN(t)+"&innodb_lock_wait_timeout=1", 0,
		keystore.WithRetryOptions(keystore.OnRetry(func(int, error) { retries.Add(1) })))
	ctx := context.Background()
	if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: []string{"p"}}); err != nil {
		t.Fatal(err)
	}
	holder, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(`SELECT id FROM keystore_permissions WHERE slug = 'p' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(1500*time.Millisecond, func() { holder.Rollback() })

	created, err := s.CreateKey(keystore.ContextWithActor(ctx, "user_7"),
		keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner", Permissions: []string{"p"}})
	if err != nil {
		t.Fatal(err)
	}
	if retries.Load() == 0 {
		t.Fatal("the CreateKey was not retried; the test proves nothing")
	}
	page, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws", KeyID: created.KeyID})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 1 || page.Items[0].Event != keystore.EventKeyCreate || page.Items[0].Actor != "user_7" ||
		page.Items[0].IdentityID != created.IdentityID {
		t.Fatalf("events of the retried key: %+v", page.Items)
	}
	if got := events(t, db, "ws"); !slices.Equal(got, []string{"key.create", "key.create", "identity.create"}) {
		t.Fatalf("events %v after %d retries", got, retries.Load())
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); n != 2 {
		t.Fatalf("%d keys, want 2", n)
	}
}

func TestListAuditEvents(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var keyIDs []string
	for range 7 {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
		if err != nil {
			t.Fatal(err)
		}
		keyIDs = append(keyIDs, c.KeyID)
	}
	if err := s.DeleteKey(ctx, "ws", keyIDs[0]); err != nil {
		t.Fatal(err)
	}
	// A failed mutation writes nothing.
	if err := s.DeleteKey(ctx, "ws", "key_missing"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatal(err)
	}
	var all []keystore.AuditEvent
	var sizes []int
	for req := (keystore.ListAuditEventsRequest{WorkspaceID: "ws", Limit: 3}); ; {
		page, err := s.ListAuditEvents(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		all, sizes = append(all, page.Items...), append(sizes, len(page.Items))
		if req.Cursor = page.NextCursor; req.Cursor == "" {
			break
		}
	}
	if !slices.Equal(sizes, []int{3, 3, 2}) {
		t.Fatalf("page sizes %v, want [3 3 2]", sizes)
	}
	for i, e := range all {
		want := keystore.EventKeyCreate
		if i == 7 {
			want = keystore.EventKeyDelete
		}
		if e.Event != want || (i < 7 && e.KeyID != keyIDs[i]) || e.CreatedAt.IsZero() {
			t.Fatalf("event %d: %+v, want %s", i, e, want)
		}
	}
	page, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws", KeyID: keyIDs[0]})
	if err != nil || len(page.Items) != 2 {
		t.Fatalf("events of one key: %+v, %v", page.Items, err)
	}
	for _, bad := range []keystore.ListAuditEventsRequest{{WorkspaceID: "ws", Limit: -1}, {WorkspaceID: "ws", Limit: 5000},
		{WorkspaceID: "ws", Cursor: "x' OR 1=1 --"}, {}} {
		if _, err := s.ListAuditEvents(ctx, bad); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("ListAuditEvents(%+v): %v, want ErrInvalidInput", bad, err)
		}
	}
}

// CreateKey's events carry the actor and the owner the key got, whether the
// key had no owner, created it, or found it (through a Store that had not
// seen it: on MariaDB, those are the three shapes of one-round-trip write).
func TestCreateKeyAuditEventsOfEveryOwnerPath(t *testing.T) {
	s, db := newStore(t)
	other, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := keystore.ContextWithActor(context.Background(), "svc")
	cases := []struct {
		name  string
		store *keystore.Store
		ext   string
		want  []string
	}{
		{"no owner", s, "", []string{keystore.EventKeyCreate}},
		{"new owner", s, "u", []string{keystore.EventKeyCreate, keystore.EventIdentityCreate}},
		{"owner found", other, "u", []string{keystore.EventKeyCreate}},
	}
	for _, c := range cases {
		created, err := c.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: c.ext})
		if err != nil {
			t.Fatal(err)
		}
		page, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws", Cursor: lastEventID(t, db, created.KeyID)})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range page.Items {
			got = append(got, e.Event)
			if e.Actor != "svc" || e.IdentityID != created.IdentityID || (e.Event == keystore.EventKeyCreate) != (e.KeyID == created.KeyID) {
				t.Errorf("%s: event %+v; want actor svc, identity %q and key %s on key.create", c.name, e, created.IdentityID, created.KeyID)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: events %v, want %v", c.name, got, c.want)
		}
	}
}

// lastEventID returns the id of the last audit event before the key.create
// of keyID ("" if none), a cursor for the events from it on.
func lastEventID(t *testing.T, db *sqlx.DB, keyID string) string {
	t.Helper()
	var id string
	err := db.Get(&id, `SELECT COALESCE(MAX(id), '') FROM keystore_audit_events WHERE id < (
		SELECT id FROM keystore_audit_events WHERE key_id = ? AND event = 'key.create')`, keyID)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
