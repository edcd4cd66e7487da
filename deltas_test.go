package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/idsafe/keystore"
)

// UpdateKey's deltas change one permission or role, or the balance, without
// replacing the set; requests that cannot be applied write nothing.
func TestUpdateKeyDeltas(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "r1", "r1.perm")
	createRole(t, db, "ws", "r2", "r2.perm")
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Permissions: []string{"a", "b"}, Roles: []string{"r1"}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID,
		AddPermissions: []string{"c", "new.perm", "b"}, RemovePermissions: []string{"a", "not.held"},
		AddRoles: []string{"r2"}, RemoveRoles: []string{"r1"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"b", "c", "new.perm", "r2.perm"}; !slices.Equal(k.Permissions, want) || !slices.Equal(k.Roles, []string{"r2"}) {
		t.Fatalf("after deltas: permissions %v roles %v; want %v [r2]", k.Permissions, k.Roles, want)
	}
	checkCachedSets(t, db)

	credited, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 10}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		delta int64
		want  int64
	}{{5, 15}, {-20, 0}, {1 << 62, 1 << 62}, {1 << 62, 1<<63 - 1}, {-(1<<63 - 1), 0}, {7, 7}, {math.MinInt64, 0}} {
		k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: credited.KeyID, AddCredits: c.delta})
		if err != nil || k.Credits == nil || k.Credits.Remaining != c.want {
			t.Fatalf("AddCredits(%d): %+v, %v; want %d", c.delta, k.Credits, err, c.want)
		}
	}

	before, eventsBefore := rowsInAllTables(t, db), events(t, db, "ws")
	invalid := []struct {
		field string
		req   keystore.UpdateKeyRequest
	}{
		{"AddPermissions", keystore.UpdateKeyRequest{AddPermissions: []string{"x"}, Permissions: keystore.Set([]string{"y"})}},
		{"RemoveRoles", keystore.UpdateKeyRequest{RemoveRoles: []string{"r2"}, Roles: keystore.Null[[]string]()}},
		{"RemovePermissions[1]", keystore.UpdateKeyRequest{AddPermissions: []string{"x"}, RemovePermissions: []string{"y", "x"}}},
		{"AddPermissions[0]", keystore.UpdateKeyRequest{AddPermissions: []string{"a b"}}},
		{"AddRoles[0]", keystore.UpdateKeyRequest{AddRoles: []string{""}}},
		{"AddCredits", keystore.UpdateKeyRequest{AddCredits: 1, Credits: keystore.Set(keystore.Credits{Remaining: 1})}},
		{"AddCredits", keystore.UpdateKeyRequest{AddCredits: 1, AddPermissions: []string{"z"}}}, // c has no credits
	}
	for _, c2 := range invalid {
		req := c2.req
		req.WorkspaceID, req.KeyID = "ws", c.KeyID
		_, err := s.UpdateKey(ctx, req)
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != c2.field {
			t.Errorf("%s: %v", c2.field, err)
		}
	}
	for _, req := range []keystore.UpdateKeyRequest{{AddRoles: []string{"r2", "nope"}}, {RemoveRoles: []string{"nope"}}} {
		req.WorkspaceID, req.KeyID = "ws", c.KeyID
		if _, err := s.UpdateKey(ctx, req); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("missing role %v: %v, want ErrNotFound", req, err)
		}
	}
	if after := rowsInAllTables(t, db); fmt.Sprint(after) != fmt.Sprint(before) || len(events(t, db, "ws")) != len(eventsBefore) {
		t.Fatalf("refused deltas wrote: %v -> %v", before, after)
	}
}

// Deltas commute: 32 concurrent AddPermissions of distinct slugs on one key
// leave all 32, and an Add racing a Remove of one slug ends as one of the
// two serial orders would.
func TestUpdateKeyDeltasConcurrent(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: []string{"base"}})
	if err != nil {
		t.Fatal(err)
	}
	failOnErrors(t, parallel(32, func(i int) error {
		_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID,
			AddPermissions: []string{fmt.Sprintf("p%02d", i)}})
		return err
	}))
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_key_permissions WHERE key_id = ?`, c.KeyID); n != 33 {
		t.Fatalf("%d permission links after 32 concurrent adds to 1, want 33", n)
	}
	checkCachedSets(t, db)

	for round := range 20 {
		failOnErrors(t, parallel(2, func(i int) error {
			req := keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID}
			if i == 0 {
				req.AddPermissions = []string{"contested"}
			} else {
				req.RemovePermissions = []string{"contested"}
			}
			_, err := s.UpdateKey(ctx, req)
			return err
		}))
		links := count(t, db, `SELECT COUNT(*) FROM keystore_key_permissions kp JOIN keystore_permissions p ON p.id = kp.permission_id
			WHERE kp.key_id = ? AND p.slug = 'contested'`, c.KeyID)
		k, err := s.GetKey(ctx, "ws", c.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		if links > 1 || slices.Contains(k.Permissions, "contested") != (links == 1) || len(k.Permissions) != 33+links {
			t.Fatalf("round %d: %d links, permissions %v", round, links, k.Permissions)
		}
	}
	checkCachedSets(t, db)
}

// AddCredits racing verifications loses no update: the balance ends at
// exactly what was added less what was spent.
func TestAddCreditsRacingVerifications(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 300}})
	if err != nil {
		t.Fatal(err)
	}
	var valid atomic.Int64
	const verifications, adds, each = 1000, 100, 5
	failOnErrors(t, parallel(verifications+adds, func(i int) error {
		if i%11 == 0 && i/11 < adds {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID, AddCredits: each})
			return err
		}
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
		if v.Valid {
			valid.Add(1)
		}
		return err
	}))
	got := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID)
	if want := 300 + adds*each - int(valid.Load()); got != want || got < 0 {
		t.Fatalf("remaining %d after %d valid verifications and %d adds of %d to 300, want %d", got, valid.Load(), adds, each, want)
	}
	if valid.Load() == 0 {
		t.Fatal("no verification was valid")
	}
}
