package keystore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
)

// CreateRole of an existing role works when the DSN makes the server report
// found rows as affected (clientFoundRows=true).
func TestCreateRoleWithClientFoundRows(t *testing.T) {
	s, db := storeOn(t, keystoretest.DSN(t)+"&clientFoundRows=true", 0)
	ctx := context.Background()
	first, err := s.CreateRole(ctx, "ws", "r", []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.CreateRole(ctx, "ws", "r", []string{"b"})
	if err != nil || second.ID != first.ID || len(second.Permissions) != 2 {
		t.Fatalf("second CreateRole: %+v, %v", second, err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'role.create'`); n != 1 {
		t.Fatalf("%d role.create events, want 1", n)
	}
}

// Ids that keystore could not have made are invalid input, not raw
// collation errors from the ASCII id columns.
func TestForeignIDsAreInvalidInput(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"kéy", "key_\xff", "key_1 OR 1=1", ""} {
		if _, err := s.GetKey(ctx, "ws", id); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("GetKey(%q): %v, want ErrInvalidInput", id, err)
		}
		if err := s.DeleteKey(ctx, "ws", id); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("DeleteKey(%q): %v, want ErrInvalidInput", id, err)
		}
		if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: id}); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("UpdateKey(%q): %v, want ErrInvalidInput", id, err)
		}
	}
	if _, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws", IdentityID: "é"}); !errors.Is(err, keystore.ErrInvalidInput) {
		t.Errorf("ListAuditEvents: %v, want ErrInvalidInput", err)
	}
}

// An actor that is not valid UTF-8 is cleaned, not a reason to fail writes.
func TestInvalidActorIsCleaned(t *testing.T) {
	s, db := newStore(t)
	ctx := keystore.ContextWithActor(context.Background(), "bad\xff\x00actor")
	if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil {
		t.Fatal(err)
	}
	var actor string
	if err := db.Get(&actor, `SELECT actor FROM keystore_audit_events`); err != nil || actor != "bad\uFFFDactor" {
		t.Fatalf("actor stored as %q, %v", actor, err)
	}
}

// Strings with SQL metacharacters, quotes, backslashes and unusual Unicode
// are stored and read back byte for byte, and never executed.
func TestHostileStringsRoundTrip(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	hostile := []string{
		`x'; DROP TABLE keystore_keys; --`,
		`"quoted" \backslash\ 'single' ` + "`tick`",
		"emoji 🔑 and RTL \u202e and combining e\u0301",
		`%_ LIKE wildcards \% \_`,
		"0x41 /* comment */ # hash",
	}
	for i, h := range hostile {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws" + h, KeySpaceID: "ks" + h,
			ExternalID: h, Name: h, Meta: map[string]any{h: h}, Ratelimits: []keystore.Ratelimit{{Name: h, Limit: 1, Duration: time.Second}}})
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		k, err := s.GetKey(ctx, "ws"+h, c.KeyID)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if k.ExternalID != h || k.Name != h || k.Meta[h] != h || k.KeySpaceID != "ks"+h || k.Ratelimits[0].Name != h {
			t.Fatalf("%d: read back %+v", i, k)
		}
		if id, err := s.FindIdentity(ctx, "ws"+h, h); err != nil || id.ID != c.IdentityID {
			t.Fatalf("%d: FindIdentity: %+v, %v", i, id, err)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); n != len(hostile) {
		t.Fatalf("%d keys, want %d", n, len(hostile))
	}
}
