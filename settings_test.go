package keystore_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// withParams returns dsn with the given parameters added; the driver sends
// the ones it does not know as SET statements on every new connection.
func withParams(t testing.TB, dsn string, params map[string]string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	for k, v := range params {
		cfg.Params[k] = v
	}
	return cfg.FormatDSN()
}

// Every operation works under the session settings real deployments use,
// each set through the DSN as a service would. Under a strict sql_mode,
// MariaDB refuses (rather than clamps) a session variable set past its
// maximum, and role changes used to fail that way.
func TestServerSettings(t *testing.T) {
	// MariaDB before 11.1 names the isolation tx_isolation, MySQL 8 and
	// later only transaction_isolation; ORACLE mode is MariaDB's alone.
	mariadb := isMariaDB(t, keystoretest.DB(t))
	isolation := "transaction_isolation"
	if mariadb {
		isolation = "tx_isolation"
	}
	type session = map[string]string
	cases := []struct {
		name   string
		params session
	}{
		{"sql_mode TRADITIONAL", session{"sql_mode": "'TRADITIONAL'"}},
		{"sql_mode STRICT_ALL_TABLES", session{"sql_mode": "'STRICT_ALL_TABLES,ONLY_FULL_GROUP_BY,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'"}},
		{"sql_mode ANSI_QUOTES,NO_BACKSLASH_ESCAPES", session{"sql_mode": "'ANSI_QUOTES,NO_BACKSLASH_ESCAPES,PIPES_AS_CONCAT'"}},
		{"time_zone +05:30", session{"time_zone": "'+05:30'"}},
		{"SERIALIZABLE", session{isolation: "'SERIALIZABLE'"}},
		{"READ-COMMITTED", session{isolation: "'READ-COMMITTED'"}},
		{"READ-UNCOMMITTED", session{isolation: "'READ-UNCOMMITTED'"}},
		{"parseTime off, clientFoundRows, prepared statements", session{"parseTime": "false",
			"clientFoundRows": "true", "interpolateParams": "false"}},
	}
	if mariadb {
		cases = append(cases, struct {
			name   string
			params session
		}{"sql_mode ORACLE", session{"sql_mode": "'ORACLE'"}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if strings.Contains(c.params["sql_mode"], "ANSI_QUOTES") && onVitess(t) {
				// vtgate parses every statement itself and refuses to set
				// ANSI_QUOTES (1235), so no Store can run in that mode
				// there: check that the session is refused, not run.
				db, err := sqlx.Open("mysql", withParams(t, keystoretest.DSN(t), c.params))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				var me *mysql.MySQLError
				if err := db.Ping(); !errors.As(err, &me) || me.Number != 1235 {
					t.Fatalf("a session in ANSI_QUOTES behind Vitess: %v, want error 1235 (unsupported)", err)
				}
				return
			}
			s, db := storeOn(t, withParams(t, keystoretest.DSN(t), c.params), 0)
			for name, value := range c.params {
				if name == "parseTime" || name == "clientFoundRows" || name == "interpolateParams" {
					continue // the driver's settings, not the session's
				}
				var got string
				if err := db.Get(&got, `SELECT @@SESSION.`+name); err != nil {
					t.Fatal(err)
				}
				for _, word := range strings.Split(strings.Trim(value, "'"), ",") {
					if !slices.Contains(strings.Split(got, ","), word) {
						t.Fatalf("session %s is %q, want %s", name, got, value)
					}
				}
			}
			exerciseEveryOperation(t, s, db)
		})
	}
}

// exerciseEveryOperation runs each kind of call once and checks what it
// answered.
func exerciseEveryOperation(t *testing.T, s *keystore.Store, db *sqlx.DB) {
	t.Helper()
	ctx := context.Background()
	role, err := s.CreateRole(ctx, "ws", "admin", []string{"keys.read", "keys.write"})
	if err != nil || !slices.Equal(role.Permissions, []string{"keys.read", "keys.write"}) {
		t.Fatalf("CreateRole: %+v, %v", role, err)
	}
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner",
		Name: "k'\\\"", Meta: map[string]any{"a": 1.5, "q": "'\\\""}, Credits: &keystore.Credits{Remaining: 3},
		Expires: &expires, Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 5, Duration: time.Second}},
		Permissions: []string{"billing.read"}, Roles: []string{"admin"}})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner"}); err != nil {
		t.Fatalf("CreateKey, seen owner: %v", err)
	}
	for _, roles := range []keystore.Field[[]string]{keystore.Null[[]string](), keystore.Set([]string{"admin"})} {
		if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID, Roles: roles}); err != nil {
			t.Fatalf("UpdateKey Roles: %v", err)
		}
	}
	k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID,
		Permissions: keystore.Set([]string{"x.y"}), ExternalID: keystore.Set("other"), Enabled: keystore.Set(true)})
	if err != nil || k.Name != "k'\\\"" || k.Meta["q"] != "'\\\"" || !k.Expires.Equal(expires) || k.ExternalID != "other" {
		t.Fatalf("UpdateKey: %+v, %v", k, err)
	}
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "other",
		Meta: keystore.Set(map[string]any{"plan": "pro"})}); err != nil {
		t.Fatalf("UpdateIdentity: %v", err)
	}
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Key: created.Key})
	if err != nil || !v.Valid || *v.Remaining != 2 || !slices.Equal(v.Permissions, []string{"keys.read", "keys.write", "x.y"}) ||
		v.IdentityMeta["plan"] != "pro" || !v.Expires.Equal(expires) {
		t.Fatalf("VerifyKey: %+v, %v", v, err)
	}
	if err := s.DeleteRole(ctx, "ws", "admin"); err != nil {
		t.Fatalf("DeleteRole: %v", err)
	}
	if k, err := s.GetKey(ctx, "ws", created.KeyID); err != nil || !slices.Equal(k.Permissions, []string{"x.y"}) {
		t.Fatalf("GetKey after DeleteRole: %v, %v", k.Permissions, err)
	}
	if err := s.DeleteIdentity(ctx, "ws", "other"); err != nil {
		t.Fatalf("DeleteIdentity: %v", err)
	}
	if err := s.DeleteKey(ctx, "ws", created.KeyID); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil || len(page.Items) != 1 {
		t.Fatalf("ListKeys: %d keys, %v", len(page.Items), err)
	}
	// The key operations of verification's issue: a limited key, rerolled
	// with a grace, given credits, and an imported one.
	limited, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "third",
		Credits:    &keystore.Credits{Remaining: 1},
		Ratelimits: []keystore.Ratelimit{{Name: "rpm", Limit: 1, Duration: time.Minute, AutoApply: true}}})
	if err != nil {
		t.Fatalf("CreateKey with a ratelimit: %v", err)
	}
	rerolled, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: limited.KeyID, Grace: time.Hour})
	if err != nil {
		t.Fatalf("RerollKey: %v", err)
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: limited.KeyID, AddCredits: 2,
		AddPermissions: []string{"p/q"}, RemovePermissions: []string{"none"}}); err != nil {
		t.Fatalf("UpdateKey deltas: %v", err)
	}
	// Both verifications must fall in one window of the limit, and windows
	// start on the minute.
	if left := time.Minute - time.Duration(time.Now().UnixNano()%int64(time.Minute)); left < 2*time.Second {
		time.Sleep(left)
	}
	for i, key := range []string{limited.Key, rerolled.Key} {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key, Permissions: "p/q"})
		if want := []keystore.VerificationCode{keystore.CodeValid, keystore.CodeRateLimited}[i]; err != nil || v.Code != want {
			t.Fatalf("VerifyKey %d of a key limited to 1 a minute: %s, %v; want %s", i, v.Code, err, want)
		}
	}
	if _, err := s.ImportKey(ctx, keystore.ImportKeyRequest{Hash: strings.Repeat("ab", 32),
		CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "fourth", Permissions: []string{"x.y"}}}); err != nil {
		t.Fatalf("ImportKey: %v", err)
	}
	if page, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws"}); err != nil || len(page.Items) < 8 {
		t.Fatalf("ListAuditEvents: %d events, %v", len(page.Items), err)
	}
	checkCachedSets(t, db)
	checkOwnerCopies(t, db)
}

// With autocommit off, a Store refuses to work rather than lose writes: a
// credit spend used to answer 9, 8, 7 while the table kept 10, and vanish
// when the connection closed.
func TestAutocommitOffIsRefused(t *testing.T) {
	dsn := keystoretest.DSN(t)
	good, db := storeOn(t, dsn, 0)
	ctx := context.Background()
	created, err := good.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 10}})
	if err != nil {
		t.Fatal(err)
	}
	before := rowsInAllTables(t, db)

	off, err := sqlx.Open("mysql", withParams(t, dsn, map[string]string{"autocommit": "0"}))
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	s, err := keystore.New(off)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, keystore.ErrUnsupportedSetting) || !strings.Contains(err.Error(), "autocommit") {
			t.Errorf("%s with autocommit=0: %v, want ErrUnsupportedSetting naming autocommit", what, err)
		}
	}
	for range 3 {
		_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key})
		refused("VerifyKey", err)
	}
	_, err = s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "x"})
	refused("CreateKey", err)
	_, err = s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: []string{"p"}})
	refused("CreateKey with permissions", err)
	_, err = s.CreateRole(ctx, "ws", "r", nil)
	refused("CreateRole", err)
	_, err = s.GetKey(ctx, "ws", created.KeyID)
	refused("GetKey", err)
	refused("Migrate", s.Migrate(ctx))
	off.Close() // an uncommitted write would be rolled back here

	if after := rowsInAllTables(t, db); !maps.Equal(before, after) {
		t.Errorf("rows changed: %v -> %v", before, after)
	}
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, created.KeyID); n != 10 {
		t.Fatalf("remaining %d, want 10", n)
	}
	if v, err := good.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key}); err != nil || *v.Remaining != 9 {
		t.Fatalf("VerifyKey with autocommit on: %+v, %v", v, err)
	}
}

// Migrate on a DSN that names no database says so, at once.
func TestMigrateWithoutDatabase(t *testing.T) {
	db, err := sqlx.Open("mysql", keystoretest.AdminDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Migrate(context.Background())
	if !errors.Is(err, keystore.ErrUnsupportedSetting) || !strings.Contains(err.Error(), "names no database") {
		t.Fatalf("Migrate without a database: %v", err)
	}
}
