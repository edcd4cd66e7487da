package migratetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// A user with only the runtime privileges (SELECT, INSERT, UPDATE and
// DELETE on the database, or on its keystore_* tables alone) runs a
// Store's whole workload on a schema that exists; without any one of them,
// the workload fails, refused by the server for want of that privilege.
func TestRuntimePrivileges(t *testing.T) {
	t.Parallel()
	t.Run("all", func(t *testing.T) {
		t.Parallel()
		if err := workload(t, userFor(t, migratedByStore(t), runtimePrivileges...)); err != nil {
			t.Fatalf("workload with %v: %v", runtimePrivileges, err)
		}
	})
	t.Run("on the keystore tables only", func(t *testing.T) {
		t.Parallel()
		dsn := migratedByStore(t)
		tables := rows(t, open(t, dsn), `SELECT TABLE_NAME FROM information_schema.TABLES WHERE `+keystoreTables)
		if err := workload(t, userOn(t, dsn, tables, runtimePrivileges...)); err != nil {
			t.Fatalf("workload with %v on %v: %v", runtimePrivileges, tables, err)
		}
	})
	for _, p := range runtimePrivileges {
		t.Run("without "+p, func(t *testing.T) {
			t.Parallel()
			err := workload(t, userFor(t, migratedByStore(t), without(runtimePrivileges, p)...))
			if !isDenied(err) {
				t.Fatalf("workload without %s: %v; want a privilege error", p, err)
			}
			t.Logf("without %s: %v", p, err)
		})
	}
}

// A user with CREATE, SELECT and INSERT migrates an empty database with
// Store.Migrate, and the schema is the one root makes; without CREATE it
// cannot.
func TestMigratePrivileges(t *testing.T) {
	t.Parallel()
	want := schemaOf(t, open(t, migratedByStore(t)))
	dsn := keystoretest.DSN(t)
	migrator := open(t, userFor(t, dsn, migratePrivileges...))
	s, err := keystore.New(migrator)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate with %v: %v", migratePrivileges, err)
	}
	sameSchema(t, schemaOf(t, open(t, dsn)), want)

	runtime := open(t, userFor(t, keystoretest.DSN(t), runtimePrivileges...))
	if s, err = keystore.New(runtime); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); !isDenied(err) {
		t.Fatalf("Migrate of an empty database as the runtime user: %v; want a privilege error", err)
	}
}

// workload runs, as the user of dsn, what a service does with a Store:
// Migrate (the schema being current), the mutations, verifications with
// credits and ratelimits, a Store with a verification cache, settling a
// receipt, pruning receipts, the listings. It returns the first error, or
// what did not come out as it should.
func workload(t *testing.T, dsn string) (err error) {
	ctx := context.Background()
	db, err := sqlx.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	s, err := keystore.New(db)
	if err != nil {
		return err
	}
	defer s.Close()
	step := ""
	defer func() {
		if err != nil {
			err = fmt.Errorf("%s: %w", step, err)
		}
	}()
	const ws, ks = "ws_1", "ks_1"
	verify := func(key string, want keystore.VerificationCode, remaining int64) error {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: ws, KeySpaceID: ks, Key: key})
		if err != nil {
			return err
		}
		if v.Code != want || want == keystore.CodeValid && (v.Remaining == nil || *v.Remaining != remaining) {
			return fmt.Errorf("verification %s, remaining %v; want %s, %d", v.Code, v.Remaining, want, remaining)
		}
		return nil
	}

	step = "Migrate"
	if err := s.Migrate(ctx); err != nil {
		return err
	}
	step = "CreateRole"
	if _, err := s.CreateRole(ctx, ws, "reader", []string{"keys.read"}); err != nil {
		return err
	}
	step = "CreateKey"
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{
		WorkspaceID: ws, KeySpaceID: ks, Prefix: "sk", Name: "first",
		ExternalID:  "customer-42",
		Meta:        map[string]any{"tier": "gold"},
		Credits:     &keystore.Credits{Remaining: 3},
		Ratelimits:  []keystore.Ratelimit{{Name: "per-minute", Limit: 2, Duration: time.Minute, AutoApply: true}},
		Permissions: []string{"keys.write"},
		Roles:       []string{"reader"},
	})
	if err != nil {
		return err
	}
	step = "VerifyKey with credits and a ratelimit"
	for _, want := range []struct {
		code      keystore.VerificationCode
		remaining int64
	}{{keystore.CodeValid, 2}, {keystore.CodeValid, 1}, {keystore.CodeRateLimited, 0}} {
		if err := verify(created.Key, want.code, want.remaining); err != nil {
			return err
		}
	}
	step = "VerifyKey with a permission query"
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: ws, KeySpaceID: ks, Key: created.Key,
		Permissions: "keys.read AND keys.write", NoSpend: true})
	if err != nil {
		return err
	}
	if !v.Valid || v.ExternalID != "customer-42" {
		return fmt.Errorf("verification %+v", v)
	}
	step = "UpdateKey"
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: ws, KeyID: created.KeyID,
		Name: keystore.Set("renamed"), AddCredits: 5, RemovePermissions: []string{"keys.write"},
		Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "per-minute", Limit: 100, Duration: time.Minute, AutoApply: true}}),
	}); err != nil {
		return err
	}
	step = "GetKey"
	key, err := s.GetKey(ctx, ws, created.KeyID)
	if err != nil {
		return err
	}
	if key.Name != "renamed" || key.Credits == nil || key.Credits.Remaining != 6 || !slices.Equal(key.Permissions, []string{"keys.read"}) {
		return fmt.Errorf("key after UpdateKey: %+v", key)
	}
	step = "UpdateIdentity"
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: ws, ExternalID: "customer-42",
		Meta: keystore.Set(map[string]any{"plan": "pro"})}); err != nil {
		return err
	}
	step = "RerollKey"
	rerolled, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: ws, KeyID: created.KeyID, Grace: time.Minute})
	if err != nil {
		return err
	}
	if err := verify(rerolled.Key, keystore.CodeValid, 5); err != nil {
		return err
	}
	if err := verify(created.Key, keystore.CodeValid, 4); err != nil { // its grace
		return err
	}
	step = "RerollKey without grace" // deletes the expired old hashes
	if rerolled, err = s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: ws, KeyID: created.KeyID}); err != nil {
		return err
	}
	step = "ImportKeys"
	var imports []keystore.ImportKeyRequest
	for i := range 2 {
		sum := sha256.Sum256(fmt.Appendf(nil, "imported-%d", i))
		imports = append(imports, keystore.ImportKeyRequest{
			CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: ws, KeySpaceID: ks, ExternalID: "customer-43",
				Credits: &keystore.Credits{Remaining: 10}},
			Hash: hex.EncodeToString(sum[:]),
		})
	}
	if _, err := s.ImportKeys(ctx, imports); err != nil {
		return err
	}
	if err := verify("imported-1", keystore.CodeValid, 9); err != nil {
		return err
	}

	step = "WithVerifyCache"
	cached, err := keystore.New(db, keystore.WithVerifyCache(1000, 100*time.Millisecond))
	if err != nil {
		return err
	}
	defer cached.Close()
	if v, err := cached.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: ws, KeySpaceID: ks, Key: rerolled.Key}); err != nil || !v.Valid {
		return fmt.Errorf("cached verification %+v, %w", v, err)
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: ws, KeyID: created.KeyID, Enabled: keystore.Set(false)}); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		v, err := cached.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: ws, KeySpaceID: ks, Key: rerolled.Key})
		if err != nil {
			return err
		}
		if v.Code == keystore.CodeDisabled {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cache still answers %s for a disabled key", v.Code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := cached.VerifyCacheStats(); st == (keystore.VerifyCacheStats{}) {
		return fmt.Errorf("the cache did nothing: %+v", st)
	}

	step = "listings"
	if page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: ws, KeySpaceID: ks}); err != nil || len(page.Items) != 3 {
		return fmt.Errorf("ListKeys: %d keys, %w", len(page.Items), err)
	}
	if page, err := s.ListIdentities(ctx, keystore.ListIdentitiesRequest{WorkspaceID: ws}); err != nil || len(page.Items) != 2 {
		return fmt.Errorf("ListIdentities: %d identities, %w", len(page.Items), err)
	}
	events, err := s.ListAuditEvents(ctx, keystore.ListAuditEventsRequest{WorkspaceID: ws})
	if err != nil || len(events.Items) == 0 {
		return fmt.Errorf("ListAuditEvents: %d events, %w", len(events.Items), err)
	}

	step = "Settle" // KILL of a connection of the same user; the process list; the server's uptime
	held, err := db.Connx(ctx)
	if err != nil {
		return err
	}
	defer held.Close()
	var r keystore.Receipt
	if err := held.QueryRowxContext(ctx, `SELECT CONNECTION_ID(), CONCAT_WS(':', @@hostname, @@server_id, @@datadir),
		CAST(UNIX_TIMESTAMP() - VARIABLE_VALUE AS SIGNED) FROM information_schema.GLOBAL_STATUS
		WHERE VARIABLE_NAME = 'UPTIME'`).Scan(&r.Thread, &r.Server, &r.Started); err != nil {
		return err
	}
	r.ID = events.Items[0].ID
	committed, err := s.Settle(ctx, r)
	if err != nil {
		return err
	}
	if !committed {
		return errors.New("Settle of a committed event's receipt: not committed")
	}
	if err := held.PingContext(ctx); err == nil {
		return errors.New("Settle left the receipt's connection running")
	}

	step = "DeleteKey"
	if err := s.DeleteKey(ctx, ws, created.KeyID); err != nil {
		return err
	}
	if err := verify(rerolled.Key, keystore.CodeNotFound, 0); err != nil {
		return err
	}
	step = "DeleteRole"
	if err := s.DeleteRole(ctx, ws, "reader"); err != nil {
		return err
	}
	step = "DeleteIdentity"
	if err := s.DeleteIdentity(ctx, ws, "customer-43"); err != nil {
		return err
	}

	step = "WithoutAudit and PruneReceipts"
	quiet, err := keystore.New(db, keystore.WithoutAudit())
	if err != nil {
		return err
	}
	defer quiet.Close()
	if err := quiet.DeleteIdentity(ctx, ws, "customer-42"); err != nil { // writes a receipt
		return err
	}
	if n, err := quiet.PruneReceipts(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		return fmt.Errorf("PruneReceipts: %d, %w", n, err)
	}

	step = "Migrate at the end"
	return s.Migrate(ctx)
}
