package keystore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func TestCreateRole(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	role, err := s.CreateRole(ctx, "ws", "admin", []string{"keys.write", "keys.read", "keys.read"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(role.ID, "role_") || role.WorkspaceID != "ws" || role.Name != "admin" ||
		!slices.Equal(role.Permissions, []string{"keys.read", "keys.write"}) || time.Since(role.CreatedAt).Abs() > time.Minute {
		t.Fatalf("CreateRole returned %+v", role)
	}
	// Idempotent: the same call again changes nothing; new permissions are
	// added to the existing ones; an empty list keeps them.
	steps := []struct {
		slugs []string
		want  []string
	}{
		{[]string{"keys.read", "keys.write"}, []string{"keys.read", "keys.write"}},
		{[]string{"billing"}, []string{"billing", "keys.read", "keys.write"}},
		{nil, []string{"billing", "keys.read", "keys.write"}},
	}
	for _, step := range steps {
		got, err := s.CreateRole(ctx, "ws", "admin", step.slugs)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != role.ID || !got.CreatedAt.Equal(role.CreatedAt) || !slices.Equal(got.Permissions, step.want) {
			t.Fatalf("CreateRole(%v) returned %+v, want id %s with %v", step.slugs, got, role.ID, step.want)
		}
	}
	// Same name in another workspace: another role.
	if other, err := s.CreateRole(ctx, "ws2", "admin", nil); err != nil || other.ID == role.ID || other.Permissions != nil {
		t.Fatalf("admin in ws2: %+v, %v", other, err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_roles WHERE workspace_id = 'ws'`); n != 1 {
		t.Fatalf("%d roles, want 1", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_role_permissions WHERE role_id = ?`, role.ID); n != 3 {
		t.Fatalf("%d role permission links, want 3", n)
	}
	// One event per call that changed something.
	want := []string{"role.create", "role.update"}
	if got := events(t, db, "ws"); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestRoleValidationWritesNothing(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	cases := []struct {
		field           string
		workspace, name string
		slugs           []string
	}{
		{"WorkspaceID", "", "admin", nil},
		{"Name", "ws", "", nil},
		{"Name", "ws", "admin ", nil},
		{"Name", "ws", strings.Repeat("r", 256), nil},
		{"Permissions[1]", "ws", "admin", []string{"ok", "not ok"}},
		{"Permissions", "ws", "admin", make([]string, 1001)},
	}
	for _, c := range cases {
		_, err := s.CreateRole(ctx, c.workspace, c.name, c.slugs)
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != c.field || !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("CreateRole(%q, %q, %d slugs): %v, want a ValidationError for %s", c.workspace, c.name, len(c.slugs), err, c.field)
		}
	}
	if err := s.DeleteRole(ctx, "ws", ""); !errors.Is(err, keystore.ErrInvalidInput) {
		t.Errorf("DeleteRole with an empty name: %v", err)
	}
	for table, n := range rowsInAllTables(t, db) {
		if n != 0 {
			t.Errorf("%s has %d rows after invalid requests only", table, n)
		}
	}
}

// A key's permissions are its direct ones merged with its roles'. Deleting
// a role takes its permissions away from the keys and leaves their direct
// ones.
func TestRolePermissionsMergeIntoKeys(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	admin := createRole(t, db, "ws", "admin", "keys.read", "keys.write")
	createRole(t, db, "ws", "auditor", "keys.read", "audit.read")
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Permissions: []string{"billing", "keys.read"}, Roles: []string{"admin", "auditor"}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	check := func(step, keyID string, want []string) {
		t.Helper()
		k, err := s.GetKey(ctx, "ws", keyID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(k.Permissions, want) {
			t.Fatalf("%s: permissions %v, want %v", step, k.Permissions, want)
		}
		page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
		if err != nil {
			t.Fatal(err)
		}
		for _, listed := range page.Items {
			if listed.ID == keyID && !slices.Equal(listed.Permissions, want) {
				t.Fatalf("%s: ListKeys gives permissions %v, want %v", step, listed.Permissions, want)
			}
		}
	}
	check("created", created.KeyID, []string{"audit.read", "billing", "keys.read", "keys.write"})
	check("key without roles", plain.KeyID, []string{"billing"})

	// A permission added to a role reaches the key at once.
	if _, err := s.CreateRole(ctx, "ws", "admin", []string{"keys.delete"}); err != nil {
		t.Fatal(err)
	}
	check("role grew", created.KeyID, []string{"audit.read", "billing", "keys.delete", "keys.read", "keys.write"})

	// UpdateKey's Permissions replaces only the direct ones.
	k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID, Permissions: keystore.Set([]string{"support"})})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"audit.read", "keys.delete", "keys.read", "keys.write", "support"}; !slices.Equal(k.Permissions, want) {
		t.Fatalf("after replacing direct permissions: %v, want %v", k.Permissions, want)
	}

	if err := s.DeleteRole(ctx, "ws", "admin"); err != nil {
		t.Fatal(err)
	}
	check("admin deleted", created.KeyID, []string{"audit.read", "keys.read", "support"})
	if k, _ := s.GetKey(ctx, "ws", created.KeyID); !slices.Equal(k.Roles, []string{"auditor"}) {
		t.Fatalf("roles after DeleteRole: %v", k.Roles)
	}
	for _, table := range []string{"keystore_roles WHERE id = ?", "keystore_key_roles WHERE role_id = ?", "keystore_role_permissions WHERE role_id = ?"} {
		if n := count(t, db, `SELECT COUNT(*) FROM `+table, admin.ID); n != 0 {
			t.Fatalf("%d rows left in %s", n, table)
		}
	}
	// Permissions themselves stay: other keys and roles may use them.
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_permissions WHERE slug = 'keys.write'`); n != 1 {
		t.Fatalf("permission keys.write was deleted with the role")
	}

	// Deleting it again, or a role that never existed, is ErrNotFound and
	// writes nothing, not even an event.
	before := rowsInAllTables(t, db)
	for _, name := range []string{"admin", "ghost"} {
		if err := s.DeleteRole(ctx, "ws", name); !errors.Is(err, keystore.ErrNotFound) {
			t.Fatalf("DeleteRole(%s): %v, want ErrNotFound", name, err)
		}
	}
	if err := s.DeleteRole(ctx, "other-ws", "auditor"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("DeleteRole from another workspace: %v, want ErrNotFound", err)
	}
	if after := rowsInAllTables(t, db); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("failed DeleteRole wrote rows: before %v, after %v", before, after)
	}
	// The name can be used again at once, for a new role.
	again, err := s.CreateRole(ctx, "ws", "admin", nil)
	if err != nil || again.ID == admin.ID || again.Permissions != nil {
		t.Fatalf("recreated admin: %+v, %v", again, err)
	}
	want := []string{"role.create", "role.create", "key.create", "key.create", "role.update", "key.update", "role.delete", "role.create"}
	if got := events(t, db, "ws"); !slices.Equal(got, want) {
		t.Fatalf("events\n%v\nwant\n%v", got, want)
	}
	checkCachedSets(t, db)
}

// Many callers create one new role at once, each with its own overlapping
// set of new permissions: all succeed, one role exists, and it holds the
// union.
func TestConcurrentCreateRole(t *testing.T) {
	var retries atomic.Int64
	s, db := newStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(int, error) { retries.Add(1) })))
	ctx := context.Background()
	const workers = 32
	rounds := 5
	if short() {
		rounds = 2
	}
	for round := range rounds {
		name := fmt.Sprintf("role-%d", round)
		sets := make([][]string, workers)
		var union []string
		for i := range sets {
			// Overlapping sets, given in different orders.
			sets[i] = []string{"common", fmt.Sprintf("r%d.p%d", round, i%8), fmt.Sprintf("r%d.p%d", round, (i+1)%8)}
			if i%2 == 1 {
				slices.Reverse(sets[i])
			}
			union = append(union, sets[i]...)
		}
		slices.Sort(union)
		union = slices.Compact(union)
		roles := make([]keystore.Role, workers)
		errs := parallel(workers, func(i int) error {
			var err error
			roles[i], err = s.CreateRole(ctx, "ws", name, sets[i])
			return err
		})
		failOnErrors(t, errs)
		for i, r := range roles {
			if r.ID != roles[0].ID {
				t.Fatalf("round %d: callers got roles %s and %s", round, roles[0].ID, r.ID)
			}
			for _, slug := range sets[i] {
				if !slices.Contains(r.Permissions, slug) {
					t.Fatalf("round %d: caller %d got %v, without its own %s", round, i, r.Permissions, slug)
				}
			}
		}
		if n := count(t, db, `SELECT COUNT(*) FROM keystore_roles WHERE name = ?`, name); n != 1 {
			t.Fatalf("round %d: %d rows for the role, want 1", round, n)
		}
		var got []string
		if err := db.Select(&got, `SELECT p.slug FROM keystore_role_permissions rp JOIN keystore_permissions p
			ON p.id = rp.permission_id WHERE rp.role_id = ? ORDER BY p.slug`, roles[0].ID); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, union) {
			t.Fatalf("round %d: role holds %v, want %v", round, got, union)
		}
		if final, err := s.CreateRole(ctx, "ws", name, nil); err != nil || !slices.Equal(final.Permissions, union) {
			t.Fatalf("round %d: role reads back as %v (%v), want %v", round, final.Permissions, err, union)
		}
		// Exactly one role.create; a role.update only from calls that
		// added something, so at most one per permission of the union.
		creates := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'role.create' AND role_id = ?`, roles[0].ID)
		updates := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'role.update' AND role_id = ?`, roles[0].ID)
		if creates != 1 || updates > len(union) {
			t.Fatalf("round %d: %d role.create and %d role.update events", round, creates, updates)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_permissions WHERE slug = 'common'`); n != 1 {
		t.Fatalf("%d rows for permission common", n)
	}
	t.Logf("%d retries in %d rounds of %d", retries.Load(), rounds, workers)
}

// Roles are deleted and created again while keys are created with them and
// other callers add permissions to them: no link to a deleted role is left
// behind, and nothing fails except CreateKey naming a role that is gone.
func TestConcurrentDeleteRoleWhileLinking(t *testing.T) {
	var retries, mostRetries atomic.Int64
	s, db := newStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(attempt int, _ error) {
		retries.Add(1)
		for m := mostRetries.Load(); int64(attempt) > m && !mostRetries.CompareAndSwap(m, int64(attempt)); m = mostRetries.Load() {
		}
	})))
	ctx := context.Background()
	duration := time.Second
	if short() {
		duration = 400 * time.Millisecond
	}
	stop := make(chan struct{})
	time.AfterFunc(duration, func() { close(stop) })
	var keys, missing, deletes atomic.Int64
	errs := parallel(12, func(i int) error {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return nil
			default:
			}
			var err error
			switch i % 4 {
			case 0, 1:
				_, err = s.CreateRole(ctx, "ws", "r", []string{fmt.Sprintf("p%d", n%5)})
			case 2:
				_, err = s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"r"}})
				if errors.Is(err, keystore.ErrNotFound) {
					missing.Add(1)
					err = nil
				} else if err == nil {
					keys.Add(1)
				}
			case 3:
				err = s.DeleteRole(ctx, "ws", "r")
				if errors.Is(err, keystore.ErrNotFound) {
					err = nil
				} else if err == nil {
					deletes.Add(1)
				}
				time.Sleep(2 * time.Millisecond) // leave the role alive now and then, for keys to link
			}
			if err != nil {
				return err
			}
		}
	})
	failOnErrors(t, errs)
	t.Logf("%d keys with the role, %d without a role to link, %d deletes; %d retries, at most %d in one call",
		keys.Load(), missing.Load(), deletes.Load(), retries.Load(), mostRetries.Load())
	if deletes.Load() < 3 || keys.Load() < 3 {
		t.Fatalf("too little contention: %d deletes, %d keys", deletes.Load(), keys.Load())
	}
	for _, q := range []string{
		`SELECT COUNT(*) FROM keystore_key_roles kr LEFT JOIN keystore_roles r ON r.id = kr.role_id WHERE r.id IS NULL`,
		`SELECT COUNT(*) FROM keystore_role_permissions rp LEFT JOIN keystore_roles r ON r.id = rp.role_id WHERE r.id IS NULL`,
	} {
		if n := count(t, db, q); n != 0 {
			t.Fatalf("%d links to deleted roles: %s", n, q)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'role.delete'`); int64(n) != deletes.Load() {
		t.Fatalf("%d role.delete events, %d deletes", n, deletes.Load())
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_roles`); n > 1 {
		t.Fatalf("%d roles named r", n)
	}
	checkCachedSets(t, db)
}

// Permission lists aggregated in SQL are never cut short, whatever the
// server's group_concat_max_len (MariaDB's JSON_ARRAYAGG obeys it).
func TestLongPermissionListsAreNotTruncated(t *testing.T) {
	s, db := storeOn(t, keystoretest.DSN(t)+"&group_concat_max_len=30", 0)
	ctx := context.Background()
	slugs := []string{strings.Repeat("a", 100) + ".read", strings.Repeat("b", 100) + ".write"}
	role, err := s.CreateRole(ctx, "ws", "long", slugs)
	if err != nil || !slices.Equal(role.Permissions, slugs) {
		t.Fatalf("CreateRole: %v, %v", role.Permissions, err)
	}
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"long"},
		Permissions: []string{strings.Repeat("c", 120)}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.GetKey(ctx, "ws", c.KeyID)
	if want := append(slices.Clone(slugs), strings.Repeat("c", 120)); err != nil || !slices.Equal(k.Permissions, want) {
		t.Fatalf("key permissions %v, %v; want %v", k.Permissions, err, want)
	}
	checkCachedSets(t, db)
}

// UpdateKey giving keys a role races CreateRole adding permissions to it:
// no call fails, and every key ends with the role's permissions. UpdateKey
// locks the role before the key; in the other order 100 such pairs failed.
func TestUpdateKeyRolesRacingCreateRole(t *testing.T) {
	var deadlocks atomic.Int32
	s, db := newStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(_ int, err error) {
		if keystore.IsDeadlock(err) {
			deadlocks.Add(1)
		}
	})))
	ctx := context.Background()
	if _, err := s.CreateRole(ctx, "ws", "R", nil); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 100)
	for i := range keys {
		c, _ := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"R"}})
		keys[i] = c.KeyID
	}
	errs := parallel(200, func(i int) error {
		if i%2 == 0 {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: keys[i/2], Roles: keystore.Set([]string{"R"})})
			return err
		}
		_, err := s.CreateRole(ctx, "ws", "R", []string{fmt.Sprintf("p%d", i)})
		return err
	})
	failOnErrors(t, errs)
	t.Logf("%d deadlocks retried", deadlocks.Load())
	checkCachedSets(t, db)
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE JSON_LENGTH(permissions) = 100`); n != len(keys) {
		t.Fatalf("%d of %d keys hold all 100 of the role's permissions", n, len(keys))
	}
}

// waitLockWaits waits until n transactions of this test's database are
// waiting for a row lock (InnoDB refreshes information_schema every 0.1 s).
func waitLockWaits(t *testing.T, db *sqlx.DB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := lockWaits(t, db)
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d transactions waiting for a lock, want %d", got, n)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// lockWaits counts the transactions of db's database waiting for a lock.
// MySQL fails to fill information_schema's PROCESSLIST and INNODB_TRX
// when a running statement holds bytes that are not UTF-8 (a key's hash),
// so there it reads performance_schema, which has no statement text.
func lockWaits(t *testing.T, db *sqlx.DB) int {
	t.Helper()
	if !isMariaDB(t, db) {
		return count(t, db, `SELECT COUNT(DISTINCT w.REQUESTING_ENGINE_TRANSACTION_ID)
			FROM performance_schema.data_lock_waits w
			JOIN performance_schema.data_locks l ON l.ENGINE_LOCK_ID = w.REQUESTING_ENGINE_LOCK_ID
			WHERE l.OBJECT_SCHEMA = DATABASE()`)
	}
	return count(t, db, `SELECT COUNT(*) FROM information_schema.INNODB_TRX t
		JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
		WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()`)
}

// holdAuditGap starts a transaction that locks the end of the audit table,
// so that any write reaching its audit INSERT stops there, holding every
// lock it took before. Committing the returned transaction lets them go.
// It runs at REPEATABLE READ whatever the session's level: at READ
// COMMITTED its locking read would lock no gap.
func holdAuditGap(t *testing.T, db *sqlx.DB) *sqlx.Tx {
	t.Helper()
	blocker, err := db.BeginTxx(context.Background(), &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blocker.Rollback() })
	if _, err := blocker.Exec(`SELECT id FROM keystore_audit_events FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	return blocker
}

// CreateRole recomputes the sets of every holder of the role. A holder that
// an UpdateKey is taking the role from meanwhile (it holds the key's lock
// and has not committed) must end up without it: its sets recomputed from
// the links that UpdateKey committed, not from a snapshot taken before.
// Otherwise VerifyKey grants permissions the key no longer has. (Found by
// review: the refresh's UPDATE read a snapshot older than its locks.)
func TestCreateRoleRefreshSeesRolesRemovedMeanwhile(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if _, err := s.CreateRole(ctx, "ws", "R", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	k1, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"R"}})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"R"}})
	if err != nil {
		t.Fatal(err)
	}
	if k1.KeyID > k2.KeyID {
		k1, k2 = k2, k1 // k2 is recomputed second
	}

	// The refresh recomputes k1 (its snapshot taken), then waits for k2.
	revokeRolesDuring(t, s, db, k2.KeyID, func() error {
		_, err := s.CreateRole(ctx, "ws", "R", []string{"a", "b"})
		return err
	})

	k, err := s.GetKey(ctx, "ws", k2.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Roles) != 0 || len(k.Permissions) != 0 {
		t.Errorf("key whose roles were cleared reads back with roles %v and permissions %v", k.Roles, k.Permissions)
	}
	if v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: k2.Key}); err != nil || len(v.Permissions) != 0 {
		t.Errorf("VerifyKey of the key that holds no role grants %v (%v)", v.Permissions, err)
	}
	checkCachedSets(t, db)
}

// The same for DeleteRole: a holder whose other roles an UpdateKey revokes
// meanwhile must not keep them in its sets.
func TestDeleteRoleRefreshSeesRolesRemovedMeanwhile(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if _, err := s.CreateRole(ctx, "ws", "R", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRole(ctx, "ws", "admin", []string{"admin.all"}); err != nil {
		t.Fatal(err)
	}
	k1, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"R"}})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"R", "admin"}})
	if err != nil {
		t.Fatal(err)
	}
	if k1.KeyID > k2.KeyID {
		t.Fatal("ids out of creation order")
	}

	revokeRolesDuring(t, s, db, k2.KeyID, func() error { return s.DeleteRole(ctx, "ws", "R") })
	k, err := s.GetKey(ctx, "ws", k2.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(k.Roles, "admin") || slices.Contains(k.Permissions, "admin.all") {
		t.Errorf("revoked role still on the key: roles %v, permissions %v", k.Roles, k.Permissions)
	}
	checkCachedSets(t, db)
}

// revokeRolesDuring runs an UpdateKey that clears every role of keyID and
// stops it at its audit INSERT, holding the key's lock (holdAuditGap);
// then starts roleChange and waits until it waits for that key; then lets
// both finish, failing the test if either fails.
func revokeRolesDuring(t *testing.T, s *keystore.Store, db *sqlx.DB, keyID string, roleChange func() error) {
	t.Helper()
	blocker := holdAuditGap(t, db)
	updated := make(chan error, 1)
	go func() {
		_, err := s.UpdateKey(context.Background(), keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: keyID, Roles: keystore.Set([]string{})})
		updated <- err
	}()
	waitLockWaits(t, db, 1)
	changed := make(chan error, 1)
	go func() { changed <- roleChange() }()
	waitLockWaits(t, db, 2)
	if err := blocker.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	if err := <-changed; err != nil {
		t.Fatal(err)
	}
}
