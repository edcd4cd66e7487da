package keystore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func TestCreateKeyStoresEverything(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "admin")
	createRole(t, db, "ws", "billing")
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	req := keystore.CreateKeyRequest{
		WorkspaceID: "ws", KeySpaceID: "ks", Prefix: "sk_live", ByteLength: 24, ExternalID: "User1",
		Name: "ci key", Meta: map[string]any{"plan": "pro", "seats": 3.0}, Expires: &expires,
		Credits: &keystore.Credits{Remaining: 7, Refill: &keystore.Refill{Interval: keystore.RefillMonthly, Amount: 100, Day: 31}},
		Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 10, Duration: time.Second, AutoApply: true},
			{Name: "daily", Limit: 1000, Duration: 24 * time.Hour}},
		Permissions: []string{"keys.write", "keys.read", "keys.read"},
		Roles:       []string{"billing", "admin"},
		Disabled:    true,
	}
	created, err := s.CreateKey(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Key, "sk_live_") || !strings.HasPrefix(created.KeyID, "key_") || !strings.HasPrefix(created.IdentityID, "id_") {
		t.Fatalf("unexpected ids or key: %+v", created)
	}
	k, err := s.GetKey(ctx, "ws", created.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	want := keystore.Key{
		ID: created.KeyID, WorkspaceID: "ws", KeySpaceID: "ks", Start: created.Key[:len("sk_live_")+4],
		Name: "ci key", IdentityID: created.IdentityID, ExternalID: "User1", Meta: req.Meta, Expires: &expires,
		Credits:     req.Credits,
		Ratelimits:  []keystore.Ratelimit{req.Ratelimits[1], req.Ratelimits[0]},
		Permissions: []string{"keys.read", "keys.write"}, Roles: []string{"admin", "billing"}, Enabled: false,
	}
	if time.Since(k.CreatedAt).Abs() > time.Minute || !k.UpdatedAt.Equal(k.CreatedAt) {
		t.Fatalf("timestamps: created %v, updated %v", k.CreatedAt, k.UpdatedAt)
	}
	if got, w := describe(k), describe(want); got != w {
		t.Fatalf("GetKey:\n got %s\nwant %s", got, w)
	}
	// External ids compare exactly: "user1" is another identity.
	other, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "user1"})
	if err != nil {
		t.Fatal(err)
	}
	if other.IdentityID == created.IdentityID {
		t.Fatal("User1 and user1 share an identity: external ids must be case-sensitive")
	}
}

// describe prints a Key with its pointers followed and without timestamps,
// for comparing keys.
func describe(k keystore.Key) string {
	out := fmt.Sprintf("%s %s %s %q %q %s %s %v %v %v %v %v %v", k.ID, k.WorkspaceID, k.KeySpaceID, k.Start, k.Name,
		k.IdentityID, k.ExternalID, k.Meta, k.Ratelimits, k.Permissions, k.Roles, k.Enabled, k.Expires != nil)
	if k.Expires != nil {
		out += " expires " + k.Expires.UTC().Format(time.RFC3339Nano)
	}
	if k.Credits != nil {
		out += fmt.Sprintf(" credits %d", k.Credits.Remaining)
		if k.Credits.Refill != nil {
			out += fmt.Sprintf(" refill %+v", *k.Credits.Refill)
		}
	}
	return out
}

// The plaintext key is returned once and stored nowhere.
func TestPlaintextKeyIsNeverStored(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Prefix: "pk",
		ExternalID: "u", Name: "n", Meta: map[string]any{"m": "v"}, Permissions: []string{"p"}})
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimPrefix(created.Key, "pk_")
	var columns []struct {
		Table  string `db:"TABLE_NAME"`
		Column string `db:"COLUMN_NAME"`
	}
	if err := db.Select(&columns, `SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'keystore%'`); err != nil {
		t.Fatal(err)
	}
	if len(columns) < 30 {
		t.Fatalf("found only %d columns to scan", len(columns))
	}
	for _, c := range columns {
		// Compare as bytes, hex and text alike: no column may hold the secret
		// or any 12-character piece of it.
		q := fmt.Sprintf("SELECT COUNT(*) FROM `%s` WHERE LOCATE(?, CAST(`%s` AS BINARY)) > 0 OR LOCATE(?, HEX(`%s`)) > 0",
			c.Table, c.Column, c.Column)
		for _, needle := range []string{created.Key, secret[:12], secret[len(secret)-12:]} {
			if n := count(t, db, q, needle, strings.ToUpper(fmt.Sprintf("%x", needle))); n != 0 {
				t.Fatalf("%s.%s contains (part of) the plaintext key", c.Table, c.Column)
			}
		}
	}
}

func TestUpdateKeyTriState(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "admin")
	expires := time.Now().Add(time.Hour)
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "a",
		Name: "before", Meta: map[string]any{"k": "v"}, Expires: &expires, Credits: &keystore.Credits{Remaining: 5},
		Ratelimits: []keystore.Ratelimit{{Name: "r", Limit: 1, Duration: time.Second}}, Permissions: []string{"p1"}, Roles: []string{"admin"}})
	if err != nil {
		t.Fatal(err)
	}
	// An empty update changes nothing but updated_at.
	k, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID})
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "before" || k.ExternalID != "a" || k.Meta["k"] != "v" || k.Expires == nil || k.Credits == nil ||
		len(k.Ratelimits) != 1 || len(k.Permissions) != 1 || len(k.Roles) != 1 || !k.Enabled {
		t.Fatalf("an empty update changed the key: %+v", k)
	}
	// Set replaces.
	k, err = s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID,
		Name: keystore.Set("after"), ExternalID: keystore.Set("b"), Meta: keystore.Set(map[string]any{"x": 1.0}),
		Credits:     keystore.Set(keystore.Credits{Remaining: 9, Refill: &keystore.Refill{Interval: keystore.RefillDaily, Amount: 9}}),
		Ratelimits:  keystore.Set([]keystore.Ratelimit{{Name: "s", Limit: 2, Duration: time.Minute}}),
		Permissions: keystore.Set([]string{"p3", "p2"}), Enabled: keystore.Set(false)})
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "after" || k.ExternalID != "b" || k.Meta["x"] != 1.0 || len(k.Meta) != 1 || k.Credits.Remaining != 9 ||
		k.Credits.Refill.Interval != keystore.RefillDaily || len(k.Ratelimits) != 1 || k.Ratelimits[0].Name != "s" ||
		strings.Join(k.Permissions, ",") != "p2,p3" || len(k.Roles) != 1 || k.Enabled {
		t.Fatalf("Set did not apply: %+v", k)
	}
	if got, err := s.GetKey(ctx, "ws", created.KeyID); err != nil || describe(got) != describe(k) {
		t.Fatalf("UpdateKey returned %+v, GetKey %+v (%v)", k, got, err)
	}
	// Null clears; Set of an empty slice clears too.
	k, err = s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID,
		Name: keystore.Null[string](), ExternalID: keystore.Null[string](), Meta: keystore.Null[map[string]any](),
		Expires: keystore.Null[time.Time](), Credits: keystore.Null[keystore.Credits](),
		Ratelimits: keystore.Null[[]keystore.Ratelimit](), Permissions: keystore.Set([]string{}), Roles: keystore.Null[[]string]()})
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "" || k.IdentityID != "" || k.ExternalID != "" || k.Meta != nil || k.Expires != nil || k.Credits != nil ||
		len(k.Ratelimits)+len(k.Permissions)+len(k.Roles) != 0 {
		t.Fatalf("Null did not clear: %+v", k)
	}
	rows := rowsInAllTables(t, db)
	if rows["keystore_key_permissions"]+rows["keystore_key_roles"] != 0 {
		t.Fatalf("links left behind: %v", rows)
	}
}

func TestNotFound(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(ctx, "other-ws", created.KeyID); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("GetKey from another workspace: %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "other-ws", KeyID: created.KeyID,
		Name: keystore.Set("stolen")}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("UpdateKey in another workspace: %v, want ErrNotFound", err)
	}
	if _, err := s.FindIdentity(ctx, "ws", "nobody"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("FindIdentity: %v, want ErrNotFound", err)
	}
	// A missing role fails the whole create and names the role.
	before := rowsInAllTables(t, db)
	createRole(t, db, "ws", "admin")
	_, err = s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "new-owner",
		Permissions: []string{"new.perm"}, Roles: []string{"admin", "ghost"}})
	if !errors.Is(err, keystore.ErrNotFound) || !strings.Contains(err.Error(), "ghost") {
		t.Fatalf("missing role: %v, want ErrNotFound naming ghost", err)
	}
	after := rowsInAllTables(t, db)
	after["keystore_roles"]--
	after["keystore_audit_events"]-- // createRole's role.create
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("a failed CreateKey wrote rows: before %v, after %v", before, after)
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID,
		Name: keystore.Set("x"), Roles: keystore.Set([]string{"ghost"})}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("UpdateKey with a missing role: %v, want ErrNotFound", err)
	}
	if k, _ := s.GetKey(ctx, "ws", created.KeyID); k.Name != "" {
		t.Fatalf("a failed UpdateKey applied its name: %q", k.Name)
	}
}

// Every validation failure names its field and writes nothing.
func TestValidationWritesNothing(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	valid := func() keystore.CreateKeyRequest {
		return keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner",
			Permissions: []string{"p.new"}, Ratelimits: []keystore.Ratelimit{{Name: "r", Limit: 1, Duration: time.Second}}}
	}
	cases := []struct {
		field  string
		modify func(*keystore.CreateKeyRequest)
	}{
		{"WorkspaceID", func(r *keystore.CreateKeyRequest) { r.WorkspaceID = "" }},
		{"KeySpaceID", func(r *keystore.CreateKeyRequest) { r.KeySpaceID = strings.Repeat("k", 256) }},
		{"Prefix", func(r *keystore.CreateKeyRequest) { r.Prefix = "sk-live" }},
		{"ByteLength", func(r *keystore.CreateKeyRequest) { r.ByteLength = 8 }},
		{"ExternalID", func(r *keystore.CreateKeyRequest) { r.ExternalID = "bad\x00id" }},
		{"ExternalID", func(r *keystore.CreateKeyRequest) { r.ExternalID = "\xff\xfe" }},
		{"Name", func(r *keystore.CreateKeyRequest) { r.Name = strings.Repeat("n", 1<<20) }},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = map[string]any{"big": strings.Repeat("x", 65<<10)} }},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = map[string]any{"ch": make(chan int)} }},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = deepMeta(10001) }},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = deepMeta(101) }},
		{"Meta", func(r *keystore.CreateKeyRequest) {
			r.Meta = map[string]any{"n": map[string]any{"\xff": "one", "\xfe": "two"}}
		}},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = map[string]any{"v": []any{"bad\xffbyte"}} }},
		{"Meta", func(r *keystore.CreateKeyRequest) { r.Meta = map[string]any{"n": int64(1)<<53 + 1} }},
		{"Expires", func(r *keystore.CreateKeyRequest) { r.Expires = &past }},
		{"Credits.Remaining", func(r *keystore.CreateKeyRequest) { r.Credits = &keystore.Credits{Remaining: -1} }},
		{"Credits.Refill.Amount", func(r *keystore.CreateKeyRequest) {
			r.Credits = &keystore.Credits{Refill: &keystore.Refill{Interval: keystore.RefillDaily}}
		}},
		{"Credits.Refill.Day", func(r *keystore.CreateKeyRequest) {
			r.Credits = &keystore.Credits{Refill: &keystore.Refill{Interval: keystore.RefillMonthly, Amount: 1, Day: 32}}
		}},
		{"Credits.Refill.Day", func(r *keystore.CreateKeyRequest) {
			r.Credits = &keystore.Credits{Refill: &keystore.Refill{Interval: keystore.RefillDaily, Amount: 1, Day: 1}}
		}},
		{"Ratelimits[1].Name", func(r *keystore.CreateKeyRequest) { r.Ratelimits = append(r.Ratelimits, r.Ratelimits[0]) }},
		{"Ratelimits[0].Limit", func(r *keystore.CreateKeyRequest) { r.Ratelimits[0].Limit = 0 }},
		{"Ratelimits[0].Duration", func(r *keystore.CreateKeyRequest) { r.Ratelimits[0].Duration = time.Millisecond }},
		{"Ratelimits", func(r *keystore.CreateKeyRequest) { r.Ratelimits = make([]keystore.Ratelimit, 51) }},
		{"Permissions[1]", func(r *keystore.CreateKeyRequest) { r.Permissions = []string{"ok", "x'; DROP TABLE keystore_keys; --"} }},
		{"Permissions", func(r *keystore.CreateKeyRequest) { r.Permissions = make([]string, 1001) }},
		{"Roles[0]", func(r *keystore.CreateKeyRequest) { r.Roles = []string{""} }},
		{"Roles", func(r *keystore.CreateKeyRequest) { r.Roles = make([]string, 101) }},
	}
	for _, c := range cases {
		req := valid()
		c.modify(&req)
		_, err := s.CreateKey(ctx, req)
		var ve *keystore.ValidationError
		if !errors.Is(err, keystore.ErrInvalidInput) || !errors.As(err, &ve) || ve.Field != c.field {
			t.Errorf("%s: err = %v, want a ValidationError for %s", c.field, err, c.field)
		}
	}
	updates := []struct {
		field string
		req   keystore.UpdateKeyRequest
	}{
		{"KeyID", keystore.UpdateKeyRequest{WorkspaceID: "ws"}},
		{"Enabled", keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: "key_x", Enabled: keystore.Null[bool]()}},
		{"ExternalID", keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: "key_x", ExternalID: keystore.Set("")}},
		{"Permissions[0]", keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: "key_x", Permissions: keystore.Set([]string{"a b"})}},
		{"Meta", keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: "key_x", Meta: keystore.Set(deepMeta(10001))}},
	}
	for _, c := range updates {
		_, err := s.UpdateKey(ctx, c.req)
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != c.field || !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("UpdateKey %s: err = %v", c.field, err)
		}
	}
	for _, meta := range []map[string]any{deepMeta(10001), {"k": map[string]any{"\xff": 1}}} {
		_, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "owner",
			Meta: keystore.Set(meta)})
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != "Meta" {
			t.Errorf("UpdateIdentity Meta: err = %v", err)
		}
	}
	for table, n := range rowsInAllTables(t, db) {
		if n != 0 {
			t.Errorf("%s has %d rows after invalid requests only", table, n)
		}
	}
}

// statements returns how many statements the server executed for f, which
// must use db (a pool of one connection, so the session counter is f's).
// Behind Vitess, where the server's counters are not the session's, it is
// how many db sent to vtgate (vitess_test.go).
func statements(t testing.TB, db *sqlx.DB, f func()) int {
	t.Helper()
	if onVitess(t) {
		c := countersOf(t, db)
		before := c.statements.Load()
		f()
		return int(c.statements.Load() - before)
	}
	before := serverStatus(t, db, "SESSION", "Questions")
	f()
	return serverStatus(t, db, "SESSION", "Questions") - before - 1 // the second SHOW counts itself
}

// The statement budget of CreateKey: the seed's find-then-insert needs 4 with
// an existing identity and 5 with a new one; keystore does the same plus one
// statement for the audit event. On MariaDB a key without permissions or
// roles is one statement (see onetrip.go), two for an existing owner the
// Store has not seen.
func TestCreateKeyStatementCount(t *testing.T) {
	for _, mysqlPaths := range []bool{false, true} {
		t.Run(fmt.Sprintf("mysql-paths=%v", mysqlPaths), func(t *testing.T) {
			testCreateKeyStatementCount(t, mysqlPaths)
		})
	}
}

// testCreateKeyStatementCount counts statements as the server has them, or,
// with mysqlPaths, as on a server without INSERT ... RETURNING and
// anonymous blocks (MySQL), so that MariaDB covers those paths too.
func testCreateKeyStatementCount(t *testing.T, mysqlPaths bool) {
	s, db := storeOn(t, keystoretest.DSN(t), 1)
	// A Store that has not seen u1 (another process, say) guesses it is
	// new and tries the identity's INSERT first; the key's INSERT then
	// reads the identity and returns its id. Without RETURNING (MySQL) the
	// id is read first, as the seed's code does: new identities cost the
	// read more, existing ones the failed INSERT less.
	other, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	// A Store checks its pool's session settings at its first call
	// (session.go): not what is counted here.
	if _, err := other.GetKey(context.Background(), "ws", "key_0"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatal(err)
	}
	if mysqlPaths {
		for _, s := range []*keystore.Store{s, other} {
			keystore.WithoutReturning(s)
			keystore.WithoutOneTrip(s)
		}
	}
	// want is the exact count; the budgets (with the audit event)
	// are 5 for an existing identity, 6 for a new one, 9 and 8 with
	// permissions and ratelimits.
	// MariaDB: one block, two for an unseen owner.
	noIdentity, newIdentity, existing, unseen, newWithSets := 1, 1, 1, 2, 7
	switch {
	case mysqlPaths:
		noIdentity, newIdentity, existing, unseen, newWithSets = 4, 6, 4, 5, 8
	case !isMariaDB(t, db):
		// MySQL: each Store's first CreateKey tries the anonymous block
		// once (a syntax error), and other's the RETURNING too; until
		// then neither Store knows to read the id first.
		noIdentity, newIdentity, existing, unseen = 5, 5, 4, 8
	}
	ctx := context.Background()
	rl := []keystore.Ratelimit{{Name: "a", Limit: 1, Duration: time.Second}, {Name: "b", Limit: 1, Duration: time.Second}}
	perms := []string{"a", "b", "c"}
	cases := []struct {
		name  string
		store *keystore.Store
		req   keystore.CreateKeyRequest
		want  int
	}{
		{"no identity", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"}, noIdentity},
		{"new identity", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u1"}, newIdentity},
		{"existing identity", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u1"}, existing},
		{"new identity, 3 new permissions, 2 ratelimits", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
			ExternalID: "u2", Permissions: perms, Ratelimits: rl}, newWithSets},
		{"existing identity and permissions, 2 ratelimits", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
			ExternalID: "u2", Permissions: perms, Ratelimits: rl}, 6},
		{"no identity, one role", s, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"reader"}}, 7},
		{"existing identity, unseen by the Store", other, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u1"}, unseen},
	}
	if _, err := s.CreateRole(ctx, "ws", "reader", nil); err != nil { // no permissions: the read-back check below counts the direct ones
		t.Fatal(err)
	}
	for _, c := range cases {
		var created keystore.CreatedKey
		n := statements(t, db, func() {
			var err error
			if created, err = c.store.CreateKey(ctx, c.req); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("%s: %d statements", c.name, n)
		if n != c.want {
			t.Errorf("%s: %d statements, want %d", c.name, n, c.want)
		}
		k, err := s.GetKey(ctx, "ws", created.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		if k.IdentityID != created.IdentityID || k.ExternalID != c.req.ExternalID || len(k.Permissions) != len(c.req.Permissions) {
			t.Errorf("%s: key read back with identity %q/%q and %d permissions, created with %q/%q and %d",
				c.name, k.IdentityID, k.ExternalID, len(k.Permissions), created.IdentityID, c.req.ExternalID, len(c.req.Permissions))
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities`); n != 2 {
		t.Errorf("%d identities, want 2", n)
	}
	if n := statements(t, db, func() { s.GetKey(ctx, "ws", "key_none") }); n != 1 {
		t.Errorf("GetKey: %d statements, want 1", n)
	}
}

// The store works the same without parseTime in the DSN.
func TestWithoutParseTime(t *testing.T) {
	s, _ := storeOn(t, strings.Replace(keystoretest.DSN(t), "parseTime=true", "parseTime=false", 1), 0)
	ctx := context.Background()
	expires := time.Date(2099, 1, 2, 3, 4, 5, 6000, time.UTC)
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Expires: &expires, ExternalID: "e"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.GetKey(ctx, "ws", created.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if k.Expires == nil || !k.Expires.Equal(expires) || time.Since(k.CreatedAt).Abs() > time.Minute {
		t.Fatalf("times read back wrong without parseTime: expires %v, created %v", k.Expires, k.CreatedAt)
	}
	// VerifyKey's lookup is a prepared statement: binary protocol, other decoding.
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key})
	if err != nil || !v.Valid || v.Expires == nil || !v.Expires.Equal(expires) || v.ExternalID != "e" {
		t.Fatalf("VerifyKey without parseTime: %+v, %v", v, err)
	}
}

func TestWithoutAuditWritesNoEvents(t *testing.T) {
	s, db := newStore(t, keystore.WithoutAudit())
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID, Name: keystore.Set("n")}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events`); n != 0 {
		t.Fatalf("%d audit events written by a Store made WithoutAudit", n)
	}
}

// New checks its options and does no I/O.
func TestNewOptions(t *testing.T) {
	db := sqlx.NewDb(nil, "mysql") // never used: New does no I/O
	cases := []struct {
		name string
		opts []keystore.Option
		ok   bool
	}{
		{"defaults", nil, true},
		{"replica timeout without a replica", []keystore.Option{keystore.WithReplicaTimeout(time.Second)}, true},
		{"zero replica timeout", []keystore.Option{keystore.WithReplica(db), keystore.WithReplicaTimeout(0)}, false},
		{"nil clock", []keystore.Option{keystore.WithClock(nil)}, false},
		{"nil logger", []keystore.Option{keystore.WithLogger(nil)}, false},
	}
	for _, c := range cases {
		if _, err := keystore.New(db, c.opts...); (err == nil) != c.ok {
			t.Errorf("%s: New returned %v", c.name, err)
		}
	}
	if _, err := keystore.New(nil); err == nil {
		t.Error("New(nil) returned no error")
	}
	if _, err := keystore.New(sqlx.NewDb(nil, "postgres")); err == nil {
		t.Error("New with a driver other than mysql returned no error")
	}
}

// deepMeta returns a Meta nested depth levels deep, Meta itself counted.
func deepMeta(depth int) map[string]any {
	var v any = "leaf"
	for range depth - 1 {
		v = map[string]any{"a": v}
	}
	return map[string]any{"a": v}
}

// A Meta that validation accepts reads back exactly through every read:
// nested keys and strings byte for byte, numbers as the same float64,
// nesting up to the limit. A key with the deepest Meta allowed does not
// break the reads of its key space.
func TestMetaReadsBackExactly(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	meta := map[string]any{
		"deep":    deepMeta(99),
		"strings": map[string]any{"\uFFFD": "\uFFFD", `\ufffd`: "a\x00\"\\<>&\u2028", "": ""},
		"numbers": []any{int64(1) << 53, int64(-1) << 63, 0.1, 1e300, 5e-324, -0.5, json.Number("1.50")},
	}
	want, _ := json.Marshal(meta)
	var wantMeta map[string]any
	if err := json.Unmarshal(want, &wantMeta); err != nil {
		t.Fatal(err)
	}
	same := func(what string, got map[string]any) {
		t.Helper()
		if !reflect.DeepEqual(got, wantMeta) {
			t.Errorf("%s: Meta read back differently", what)
		}
	}
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner", Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.GetKey(ctx, "ws", created.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	same("GetKey", k.Meta)
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key})
	if err != nil || !v.Valid {
		t.Fatalf("VerifyKey: %+v, %v", v, err)
	}
	same("VerifyKey", v.Meta)
	if v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: plain.Key}); err != nil || !v.Valid {
		t.Fatalf("VerifyKey of the other key: %+v, %v", v, err)
	}
	page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil || len(page.Items) != 2 {
		t.Fatalf("ListKeys: %d keys, %v", len(page.Items), err)
	}
	for _, k := range page.Items {
		if k.ID == created.KeyID {
			same("ListKeys", k.Meta)
		}
	}
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "owner",
		Meta: keystore.Set(meta)}); err != nil {
		t.Fatal(err)
	}
	id, err := s.FindIdentity(ctx, "ws", "owner")
	if err != nil {
		t.Fatal(err)
	}
	same("FindIdentity", id.Meta)
	if v, err = s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key}); err != nil {
		t.Fatal(err)
	}
	same("VerifyKey IdentityMeta", v.IdentityMeta)
}

// RerollKey: a new secret for the same key; during the grace period the old
// one verifies too, drawing on the same credits; after it, or with no grace,
// the old one is NOT_FOUND.
func TestRerollKey(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	old, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Prefix: "sk_live",
		ExternalID: "owner", Name: "ci", Permissions: []string{"docs.read"}, Credits: &keystore.Credits{Remaining: 300}})
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.GetKey(ctx, "ws", old.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	rerolled, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: old.KeyID, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rerolled.KeyID != old.KeyID || rerolled.IdentityID != old.IdentityID || rerolled.Key == old.Key ||
		!strings.HasPrefix(rerolled.Key, "sk_live_") {
		t.Fatalf("rerolled %+v from %+v", rerolled, old)
	}
	after, err := s.GetKey(ctx, "ws", old.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Start != rerolled.Key[:len(after.Start)] || after.Name != "ci" || after.ExternalID != "owner" ||
		!slices.Equal(after.Permissions, before.Permissions) {
		t.Fatalf("after reroll: %+v", after)
	}
	// Both secrets spend the one balance: 300 credits, 600 verifications
	// split between them, exactly 300 valid.
	var valid atomic.Int64
	failOnErrors(t, parallel(600, func(i int) error {
		key := old.Key
		if i%2 == 0 {
			key = rerolled.Key
		}
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key, Permissions: "docs.read"})
		if v.Valid {
			valid.Add(1)
			if v.KeyID != old.KeyID {
				return fmt.Errorf("verified as %q", v.KeyID)
			}
		}
		return err
	}))
	if valid.Load() != 300 || count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, old.KeyID) != 0 {
		t.Fatalf("%d valid of 600 on 300 shared credits", valid.Load())
	}
	if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: old.KeyID, AddCredits: 10}); err != nil {
		t.Fatal(err)
	}
	code := func(key string) keystore.VerificationCode {
		t.Helper()
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return v.Code
	}
	clock.Add(time.Hour - time.Microsecond)
	if c := code(old.Key); c != keystore.CodeValid {
		t.Fatalf("old key just before the grace ends: %s", c)
	}
	clock.Add(time.Microsecond)
	if c, n := code(old.Key), code(rerolled.Key); c != keystore.CodeNotFound || n != keystore.CodeValid {
		t.Fatalf("after the grace: old %s, new %s", c, n)
	}
	// No grace: the old secret stops at once; a second reroll also forgets
	// the expired old hash.
	again, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: old.KeyID})
	if err != nil {
		t.Fatal(err)
	}
	if c, n := code(rerolled.Key), code(again.Key); c != keystore.CodeNotFound || n != keystore.CodeValid {
		t.Fatalf("reroll without grace: old %s, new %s", c, n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_old_hashes`); n != 0 {
		t.Fatalf("%d old hashes kept", n)
	}
	if got := events(t, db, "ws"); !slices.Equal(got[len(got)-3:], []string{"key.reroll", "key.update", "key.reroll"}) {
		t.Fatalf("events %v", got)
	}
	var ve *keystore.ValidationError
	if _, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: old.KeyID, Grace: -time.Second}); !errors.As(err, &ve) || ve.Field != "Grace" {
		t.Fatalf("negative grace: %v", err)
	}
	if _, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "other", KeyID: old.KeyID}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("another workspace's key: %v", err)
	}
}
