package keystore_test

import (
	"context"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
)

// The statements each operation sends, as the README's table gives them
// (CreateKey and VerifyKey have tests of their own). Reads are one
// statement on every server; the writes' counts, BEGIN and COMMIT
// included, are MariaDB's (MySQL's differ where RETURNING or a compound
// statement would have been used). Under WithoutAudit they are the same:
// each mutation writes its receipt (settle.go) where it wrote its events.
// The change feed (changes.go) goes in the same round trip as the audit
// event or receipt on MariaDB, so it adds no statement there.
func TestStatementsPerOperation(t *testing.T) {
	t.Run("audit", func(t *testing.T) { testStatementsPerOperation(t) })
	t.Run("WithoutAudit", func(t *testing.T) { testStatementsPerOperation(t, keystore.WithoutAudit()) })
}

func testStatementsPerOperation(t *testing.T, opts ...keystore.Option) {
	s, db := storeOn(t, keystoretest.DSN(t), 1, opts...)
	ctx := context.Background()
	createRole(t, db, "ws", "reader", "a.b")
	createRole(t, db, "ws", "held", "c.d")
	owned, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"held"}}); err != nil {
		t.Fatal(err)
	}
	limited, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Ratelimits: []keystore.Ratelimit{{Name: "a", Limit: 1000, Duration: time.Hour, AutoApply: true},
			{Name: "b", Limit: 1000, Duration: time.Hour, AutoApply: true}}})
	if err != nil {
		t.Fatal(err)
	}
	mariadb := isMariaDB(t, db)
	cases := []struct {
		name string
		read bool // one statement on every server
		want int
		call func() error
	}{
		{"GetKey", true, 1, func() error { _, err := s.GetKey(ctx, "ws", owned.KeyID); return err }},
		{"ListKeys", true, 1, func() error {
			_, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
			return err
		}},
		{"FindIdentity", true, 1, func() error { _, err := s.FindIdentity(ctx, "ws", "u1"); return err }},
		{"ListIdentities", true, 1, func() error {
			_, err := s.ListIdentities(ctx, keystore.ListIdentitiesRequest{WorkspaceID: "ws"})
			return err
		}},
		{"ListAuditEvents", true, 1, func() error {
			_, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws"})
			return err
		}},
		{"UpdateKey, a field", false, 5, func() error {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: owned.KeyID, Name: keystore.Set("x")})
			return err
		}},
		{"UpdateKey, link a seen owner", false, 6, func() error {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: plain.KeyID, ExternalID: keystore.Set("u1")})
			return err
		}},
		{"UpdateKey, permissions", false, 10, func() error {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: plain.KeyID,
				Permissions: keystore.Set([]string{"p.q"})})
			return err
		}},
		{"EnsureIdentity", false, 5, func() error { _, err := s.EnsureIdentity(ctx, "ws", "u2"); return err }},
		{"UpdateIdentity", false, 9, func() error {
			_, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "u1",
				Meta: keystore.Set(map[string]any{"a": 1.0})})
			return err
		}},
		{"CreateRole", false, 10, func() error { _, err := s.CreateRole(ctx, "ws", "writer", []string{"x.y"}); return err }},
		{"DeleteRole, held by no key", false, 10, func() error { return s.DeleteRole(ctx, "ws", "reader") }},
		{"DeleteRole, held by a key", false, 12, func() error { return s.DeleteRole(ctx, "ws", "held") }},
		{"DeleteIdentity", false, 7, func() error { return s.DeleteIdentity(ctx, "ws", "u1") }},
		{"VerifyKey, two ratelimits, a lease of each", true, 9, func() error {
			_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: limited.Key})
			return err
		}},
		{"VerifyKey, two ratelimits from the leases", true, 1, func() error {
			_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: limited.Key})
			return err
		}},
		{"RerollKey, no grace", false, 6, func() error {
			_, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: limited.KeyID})
			return err
		}},
		{"RerollKey, with grace", false, 7, func() error {
			_, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: limited.KeyID, Grace: time.Minute})
			return err
		}},
		{"DeleteKey", false, 5, func() error { return s.DeleteKey(ctx, "ws", owned.KeyID) }},
	}
	for _, c := range cases {
		n := statements(t, db, func() {
			if err := c.call(); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		})
		t.Logf("%s: %d statements", c.name, n)
		if (c.read || mariadb) && n != c.want {
			t.Errorf("%s: %d statements, want %d", c.name, n, c.want)
		}
	}
}
