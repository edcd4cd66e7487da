package keystore_test

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/testutil"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func TestMain(m *testing.M) { keystoretest.Main(m) }

// newStore returns a Store on a fresh, migrated database and a handle on the
// same database for checking what was written.
func newStore(t testing.TB, opts ...keystore.Option) (*keystore.Store, *sqlx.DB) {
	t.Helper()
	return storeOn(t, keystoretest.DSN(t), 100, opts...)
}

// storeOn returns a migrated Store on a pool over dsn of at most maxOpen
// connections (0: no limit), and the pool. With one connection, session
// counters (statements, rows read) see every statement the Store sends.
func storeOn(t testing.TB, dsn string, maxOpen int, opts ...keystore.Option) (*keystore.Store, *sqlx.DB) {
	t.Helper()
	var db *sqlx.DB
	if onVitess(t) {
		db = openCounted(t, dsn) // statements(): see vitess_test.go
	} else {
		var err error
		if db, err = sqlx.Open("mysql", dsn); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(maxOpen)
	db.SetMaxIdleConns(max(maxOpen, 2)) // keep them: reconnecting is not what tests measure
	s, err := keystore.New(db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, db
}

var allTables = []string{"keystore_identities", "keystore_keys", "keystore_permissions", "keystore_roles",
	"keystore_key_permissions", "keystore_key_roles",
	"keystore_role_permissions", "keystore_audit_events", "keystore_old_hashes", "keystore_ratelimits",
	"keystore_receipts", "keystore_change_shards", "keystore_changes"}

// rowsInAllTables counts the rows of every keystore table (and sums the
// change feed's shard numbers).
func rowsInAllTables(t testing.TB, db *sqlx.DB) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range allTables {
		query := "SELECT COUNT(*) FROM " + table
		if table == "keystore_change_shards" {
			// Its rows are there from the start: a write shows in the numbers.
			query = "SELECT SUM(seq) FROM " + table
		}
		out[table] = count(t, db, query)
	}
	return out
}

// createRole creates a role with CreateRole on a Store over db; it writes a
// role.create audit event.
func createRole(t testing.TB, db *sqlx.DB, workspaceID, name string, permissions ...string) keystore.Role {
	t.Helper()
	s, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	role, err := s.CreateRole(context.Background(), workspaceID, name, permissions)
	if err != nil {
		t.Fatal(err)
	}
	return role
}

// events returns the event types of the audit trail of workspaceID, oldest
// first, read straight from the table.
func events(t testing.TB, db *sqlx.DB, workspaceID string) []string {
	t.Helper()
	var out []string
	if err := db.Select(&out, `SELECT event FROM keystore_audit_events WHERE workspace_id = ? ORDER BY id`, workspaceID); err != nil {
		t.Fatal(err)
	}
	return out
}

// parallel, failOnErrors and count: see testutil.
var (
	parallel     = testutil.Parallel
	failOnErrors = testutil.FailOnErrors
	count        = testutil.Count
)

// short reports whether to run the reduced version of long tests.
func short() bool { return testing.Short() || os.Getenv("KEYSTORE_QUICK") != "" }

// checkCachedSets asserts that every key's permissions and roles, as kept
// on its row, match what its links say.
func checkCachedSets(t testing.TB, db *sqlx.DB) {
	t.Helper()
	var keys []struct {
		ID          string  `db:"id"`
		Permissions *string `db:"permissions"`
		Roles       *string `db:"roles"`
	}
	if err := db.Select(&keys, `SELECT id, permissions, roles FROM keystore_keys`); err != nil {
		t.Fatal(err)
	}
	decode := func(s *string) []string {
		var v []string
		if s != nil {
			if err := json.Unmarshal([]byte(*s), &v); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(v)
		return slices.Compact(v)
	}
	for _, k := range keys {
		var perms, roles []string
		if err := db.Select(&perms, `SELECT slug FROM keystore_permissions WHERE id IN (
			SELECT permission_id FROM keystore_key_permissions WHERE key_id = ?
			UNION SELECT rp.permission_id FROM keystore_key_roles kr
				JOIN keystore_role_permissions rp ON rp.role_id = kr.role_id WHERE kr.key_id = ?) ORDER BY slug`, k.ID, k.ID); err != nil {
			t.Fatal(err)
		}
		if err := db.Select(&roles, `SELECT r.name FROM keystore_key_roles kr JOIN keystore_roles r ON r.id = kr.role_id
			WHERE kr.key_id = ? ORDER BY r.name`, k.ID); err != nil {
			t.Fatal(err)
		}
		if got := decode(k.Permissions); !slices.Equal(got, perms) && len(got)+len(perms) > 0 {
			t.Errorf("key %s: kept permissions %v, links say %v", k.ID, got, perms)
		}
		if got := decode(k.Roles); !slices.Equal(got, roles) && len(got)+len(roles) > 0 {
			t.Errorf("key %s: kept roles %v, links say %v", k.ID, got, roles)
		}
	}
}

// checkOwnerCopies asserts that every key's copies of its owner (external
// id, meta, ratelimits) are those of its live identity, or empty when it
// has none.
func checkOwnerCopies(t testing.TB, db *sqlx.DB) {
	t.Helper()
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys k
		LEFT JOIN keystore_identities i ON i.id = k.identity_id AND i.live = 1
		WHERE NOT (k.owner_external_id <=> i.external_id AND k.owner_meta <=> i.meta
			AND k.owner_ratelimits <=> i.ratelimits)`); n != 0 {
		t.Errorf("%d keys whose owner copies differ from their live identity", n)
	}
}

// serverStatus reads a counter of SHOW STATUS in scope (SESSION or GLOBAL).
func serverStatus(t testing.TB, db *sqlx.DB, scope, name string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SHOW `+scope+` STATUS LIKE ?`, name).Scan(new(string), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// isMariaDB reports whether db is a MariaDB server (else MySQL), for the
// few expectations that differ: MySQL has no INSERT ... RETURNING.
func isMariaDB(t testing.TB, db *sqlx.DB) bool {
	t.Helper()
	var version string
	if err := db.Get(&version, `SELECT VERSION()`); err != nil {
		t.Fatal(err)
	}
	return strings.Contains(version, "MariaDB")
}
