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

// Every operation works under the strict sql_modes production servers run
// with. Under them MariaDB refuses, rather than clamps, a session variable
// set past its maximum, and role changes used to fail that way.
func TestStrictSQLMode(t *testing.T) {
	for _, mode := range []string{"TRADITIONAL", "STRICT_ALL_TABLES", "STRICT_ALL_TABLES,ONLY_FULL_GROUP_BY,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO"} {
		t.Run(mode, func(t *testing.T) {
			dsn := withParams(t, keystoretest.DSN(t), map[string]string{"sql_mode": "'" + mode + "'"})
			s, db := storeOn(t, dsn, 0)
			var got string
			if err := db.Get(&got, `SELECT @@SESSION.sql_mode`); err != nil || !strings.Contains(got, "STRICT_ALL_TABLES") {
				t.Fatalf("sql_mode %q, %v", got, err)
			}
			ctx := context.Background()
			role, err := s.CreateRole(ctx, "ws", "admin", []string{"keys.read", "keys.write"})
			if err != nil || !slices.Equal(role.Permissions, []string{"keys.read", "keys.write"}) {
				t.Fatalf("CreateRole: %+v, %v", role, err)
			}
			created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner",
				Name: "k", Meta: map[string]any{"a": 1.5}, Credits: &keystore.Credits{Remaining: 3},
				Ratelimits:  []keystore.Ratelimit{{Name: "rps", Limit: 5, Duration: time.Second}},
				Permissions: []string{"billing.read"}, Roles: []string{"admin"}})
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			for _, roles := range []keystore.Field[[]string]{keystore.Null[[]string](), keystore.Set([]string{"admin"})} {
				if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID, Roles: roles}); err != nil {
					t.Fatalf("UpdateKey Roles: %v", err)
				}
			}
			if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID,
				Permissions: keystore.Set([]string{"x.y"}), ExternalID: keystore.Set("other"), Enabled: keystore.Set(true)}); err != nil {
				t.Fatalf("UpdateKey: %v", err)
			}
			if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "other",
				Meta: keystore.Set(map[string]any{"plan": "pro"})}); err != nil {
				t.Fatalf("UpdateIdentity: %v", err)
			}
			v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key})
			if err != nil || !v.Valid || *v.Remaining != 2 || !slices.Equal(v.Permissions, []string{"keys.read", "keys.write", "x.y"}) {
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
			if page, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: "ws"}); err != nil || len(page.Items) < 8 {
				t.Fatalf("ListAuditEvents: %d events, %v", len(page.Items), err)
			}
			checkCachedSets(t, db)
		})
	}
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
