package faulttest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
	"github.com/rs/zerolog"
)

// ioTimeout is the DSN's readTimeout and writeTimeout for pools that go
// through a fault: it bounds a statement or COMMIT whose reply never comes.
const ioTimeout = 2 * time.Second

// newProxy starts an embedded toxiproxy on a free loopback port forwarding to
// upstream, stopped when t ends.
func newProxy(t *testing.T, upstream string) *toxiproxy.Proxy {
	t.Helper()
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(api, t.Name(), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

// toxic is one toxiproxy toxic, as its JSON API takes it.
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"` // "upstream" (to the server) or "downstream"
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

// addToxic adds x to p. It reports failure with t.Errorf, so it may be
// called from any goroutine.
func addToxic(t *testing.T, p *toxiproxy.Proxy, x toxic) {
	t.Helper()
	b, err := json.Marshal(x)
	if err != nil {
		t.Errorf("toxic %s: %v", x.Name, err)
		return
	}
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(string(b))); err != nil {
		t.Errorf("toxiproxy: add %s: %v", x.Name, err)
	}
}

// removeToxic removes the toxic name from p, reporting like addToxic.
func removeToxic(t *testing.T, p *toxiproxy.Proxy, name string) {
	t.Helper()
	if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Errorf("toxiproxy: remove %s: %v", name, err)
	}
}

// faultConfig returns the driver configuration of dsn for a pool that meets
// faults: short I/O timeouts and no driver log lines (broken connections
// are the point here).
func faultConfig(t *testing.T, dsn string) *mysql.Config {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ParseTime = true
	cfg.InterpolateParams = true
	cfg.Timeout = ioTimeout
	cfg.ReadTimeout = ioTimeout
	cfg.WriteTimeout = ioTimeout
	cfg.Logger = &mysql.NopLogger{}
	return cfg
}

// openPool opens a pool with cfg, closed when t ends.
func openPool(t *testing.T, cfg *mysql.Config) *sqlx.DB {
	t.Helper()
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sqlx.NewDb(sql.OpenDB(conn), "mysql")
	t.Cleanup(func() { db.Close() })
	return db
}

// fixture is a migrated database of the shared server, reached directly
// (Direct, for setup and checks) and through a toxiproxy (Proxied, for the
// Store under test).
type fixture struct {
	Direct  *sqlx.DB
	Proxy   *toxiproxy.Proxy
	Proxied *sqlx.DB
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dsn := keystoretest.DSN(t)
	direct := openPool(t, faultConfig(t, dsn))
	migrate(t, direct)
	cfg := faultConfig(t, dsn)
	p := newProxy(t, cfg.Addr)
	cfg.Addr = p.Listen
	return &fixture{Direct: direct, Proxy: p, Proxied: openPool(t, cfg)}
}

func migrate(t *testing.T, db *sqlx.DB) {
	t.Helper()
	store, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := store.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
}

// outcome classifies the error of one call under faults. Every error must be
// one the library documents for a failure it could not hide: the commit
// outcome is unknown, or the retries ran out. Anything else (a bare
// connection error, a duplicate key, a deadlock) is a classification bug.
type outcome int

const (
	succeeded outcome = iota
	ambiguous         // ErrAmbiguousCommit: the key is wholly there or wholly absent
	exhausted         // ErrRetriesExhausted: nothing was written
	unclassified
)

func classify(err error) outcome {
	switch {
	case err == nil:
		return succeeded
	case errors.Is(err, keystore.ErrAmbiguousCommit):
		return ambiguous
	case errors.Is(err, keystore.ErrRetriesExhausted):
		return exhausted
	}
	return unclassified
}

// isConnectionError reports whether err is a broken or refused connection,
// as a caller would see one; used only to describe exhausted retries.
func isConnectionError(err error) bool {
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne)
}

// expectation is what every key created for one external id must hold.
type expectation struct {
	Permissions []string // sorted
	Ratelimits  string   // the ratelimits JSON of the key row
}

// checkInvariants checks, on db (a direct connection, not through a fault),
// that the keys of workspace were written whole, and returns their ids. Each
// key's Name is the external id it was created for, and want gives what that
// external id's keys must hold.
//
//   - no live identity is duplicated, and every identity has a key (the
//     transaction that created it also created a key, or neither exists);
//   - every key links to a live identity whose external id is its name;
//   - its cached permissions equal its permission links, which equal the
//     requested set, and its ratelimits are the requested ones;
//   - it has exactly one key.create audit event; no link points at a key
//     that does not exist.
func checkInvariants(t *testing.T, db *sqlx.DB, workspace string, want map[string]expectation) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var dups []struct {
		ExternalID string `db:"external_id"`
		N          int    `db:"n"`
	}
	if err := db.SelectContext(ctx, &dups, `SELECT external_id, COUNT(*) AS n FROM keystore_identities
		WHERE workspace_id = ? AND deleted_at IS NULL GROUP BY external_id HAVING COUNT(*) > 1`, workspace); err != nil {
		t.Fatal(err)
	}
	for _, d := range dups {
		t.Errorf("external id %q has %d live identities, want 1", d.ExternalID, d.N)
	}

	var keyless []string
	if err := db.SelectContext(ctx, &keyless, `SELECT i.external_id FROM keystore_identities i
		WHERE i.workspace_id = ? AND NOT EXISTS (SELECT 1 FROM keystore_keys k WHERE k.identity_id = i.id)`, workspace); err != nil {
		t.Fatal(err)
	}
	for _, ext := range keyless {
		t.Errorf("identity for %q has no key: its transaction was half-applied", ext)
	}

	var keys []struct {
		ID          string         `db:"id"`
		Name        sql.NullString `db:"name"`
		External    sql.NullString `db:"external_id"`
		Permissions sql.NullString `db:"permissions"`
		Ratelimits  sql.NullString `db:"ratelimits"`
		Links       sql.NullString `db:"links"`
		Creates     int            `db:"creates"`
	}
	if err := db.SelectContext(ctx, &keys, `SELECT k.id, k.name, i.external_id, k.permissions, k.ratelimits,
		(SELECT GROUP_CONCAT(p.slug ORDER BY p.slug SEPARATOR ',') FROM keystore_key_permissions kp
			JOIN keystore_permissions p ON p.id = kp.permission_id WHERE kp.key_id = k.id) AS links,
		(SELECT COUNT(*) FROM keystore_audit_events a WHERE a.key_id = k.id AND a.event = 'key.create') AS creates
		FROM keystore_keys k LEFT JOIN keystore_identities i ON i.id = k.identity_id AND i.deleted_at IS NULL
		WHERE k.workspace_id = ?`, workspace); err != nil {
		t.Fatal(err)
	}
	ids := make(map[string]bool, len(keys))
	for _, k := range keys {
		ids[k.ID] = true
		w, ok := want[k.Name.String]
		switch {
		case !ok:
			t.Errorf("key %s: name %q is no external id of the workload", k.ID, k.Name.String)
			continue
		case !k.External.Valid:
			t.Errorf("key %s: no live identity linked", k.ID)
		case k.External.String != k.Name.String:
			t.Errorf("key %s: linked to identity of %q, want %q", k.ID, k.External.String, k.Name.String)
		}
		var cached []string
		if k.Permissions.Valid {
			if err := json.Unmarshal([]byte(k.Permissions.String), &cached); err != nil {
				t.Errorf("key %s: permissions %q: %v", k.ID, k.Permissions.String, err)
			}
		}
		var links []string
		if k.Links.Valid {
			links = strings.Split(k.Links.String, ",")
		}
		if !slices.Equal(cached, w.Permissions) || !slices.Equal(links, w.Permissions) {
			t.Errorf("key %s: cached permissions %v, links %v, want %v", k.ID, cached, links, w.Permissions)
		}
		if k.Ratelimits.String != w.Ratelimits {
			t.Errorf("key %s: ratelimits %q, want %q", k.ID, k.Ratelimits.String, w.Ratelimits)
		}
		if k.Creates != 1 {
			var evs []string
			_ = db.SelectContext(ctx, &evs, `SELECT CONCAT_WS(' ', id, IFNULL(identity_id, '-'), created_at) FROM keystore_audit_events
				WHERE key_id = ? AND event = 'key.create' ORDER BY id`, k.ID)
			t.Errorf("key %s (permissions %v): %d key.create audit events, want 1: %v", k.ID, w.Permissions, k.Creates, evs)
		}
	}

	var orphans int
	if err := db.GetContext(ctx, &orphans, `SELECT COUNT(*) FROM keystore_key_permissions kp
		WHERE NOT EXISTS (SELECT 1 FROM keystore_keys k WHERE k.id = kp.key_id)`); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%d permission links point at no key", orphans)
	}
	return ids
}

// ratelimitsJSON reads back how the store writes rls on a key row, by
// creating a key with them on db and reading its row.
func ratelimitsJSON(t *testing.T, db *sqlx.DB, rls []keystore.Ratelimit) string {
	t.Helper()
	store, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_probe", KeySpaceID: "ks", Ratelimits: rls})
	if err != nil {
		t.Fatal(err)
	}
	var s string
	if err := db.GetContext(ctx, &s, `SELECT ratelimits FROM keystore_keys WHERE id = ?`, k.KeyID); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitIdle waits until no connection of db is in use, and fails t if that
// takes more than a few seconds: a connection still in use after its call
// returned is a leak.
func waitIdle(t *testing.T, db *sqlx.DB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for db.Stats().InUse != 0 {
		if time.Now().After(deadline) {
			t.Errorf("pool: %d connections still in use", db.Stats().InUse)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// report logs a tally of outcomes.
func report(t *testing.T, counts map[outcome]int, retries int64) {
	t.Helper()
	t.Logf("calls: %d succeeded, %d ambiguous commits, %d retries exhausted, %d unclassified; %d retries",
		counts[succeeded], counts[ambiguous], counts[exhausted], counts[unclassified], retries)
}

// ownServer starts a MariaDB server for t alone (for a test that kills or
// freezes it, which would disturb every other test of a shared one),
// stopped when t ends, with an empty database named database. It skips t
// only where no server can be started but KEYSTORE_TEST_DSN names one.
func ownServer(t *testing.T, ctx context.Context, database string) *mariadb.Server {
	t.Helper()
	srv, err := mariadb.Start(ctx)
	if errors.Is(err, mariadb.ErrNotInstalled) && os.Getenv(keystoretest.EnvDSN) != "" {
		t.Skipf("needs a MariaDB server of its own: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	admin := openPool(t, faultConfig(t, srv.DSN("")))
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+database); err != nil {
		t.Fatal(err)
	}
	return srv
}
