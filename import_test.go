package keystore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
)

func hashOf(plaintext string) string {
	h := sha256.Sum256([]byte(plaintext))
	return hex.EncodeToString(h[:])
}

// An imported key verifies with its original plaintext at once, with
// everything CreateKey would have stored; a hash stored already, or
// malformed, is invalid input and writes nothing.
func TestImportKey(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "reader", "docs.read")
	const plaintext = "legacy_3f9a0c1d2e"
	created, err := s.ImportKey(ctx, keystore.ImportKeyRequest{
		CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "customer-1",
			Name: "from the old system", Permissions: []string{"docs.write"}, Roles: []string{"reader"},
			Credits: &keystore.Credits{Remaining: 5}},
		Hash: strings.ToUpper(hashOf(plaintext)), Start: "legacy_3f9"})
	if err != nil {
		t.Fatal(err)
	}
	if created.Key != "" || created.KeyID == "" || created.IdentityID == "" {
		t.Fatalf("created %+v", created)
	}
	v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: plaintext, Permissions: "docs.read AND docs.write"})
	if err != nil || !v.Valid || v.KeyID != created.KeyID || v.ExternalID != "customer-1" || *v.Remaining != 4 {
		t.Fatalf("verify the imported plaintext: %+v, %v", v, err)
	}
	k, err := s.GetKey(ctx, "ws", created.KeyID)
	if err != nil || k.Start != "legacy_3f9" || k.Name != "from the old system" || !slices.Equal(k.Roles, []string{"reader"}) {
		t.Fatalf("GetKey: %+v, %v", k, err)
	}
	if got := events(t, db, "ws"); !slices.Equal(got[len(got)-2:], []string{"identity.create", "key.import"}) {
		t.Fatalf("events %v", got)
	}
	checkCachedSets(t, db)
	checkOwnerCopies(t, db)

	before := rowsInAllTables(t, db)
	rerolled, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RerollKey(ctx, keystore.RerollKeyRequest{WorkspaceID: "ws", KeyID: rerolled.KeyID, Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	before = rowsInAllTables(t, db)
	bad := []struct {
		field string
		req   keystore.ImportKeyRequest
	}{
		{"Hash", keystore.ImportKeyRequest{Hash: hashOf(plaintext)}},       // stored already
		{"Hash", keystore.ImportKeyRequest{Hash: hashOf(rerolled.Key)}},    // a rerolled key's old hash
		{"Hash", keystore.ImportKeyRequest{Hash: hashOf("x")[:63]}},        // too short
		{"Hash", keystore.ImportKeyRequest{Hash: hashOf("x")[:62] + "zz"}}, // not hex
		{"Start", keystore.ImportKeyRequest{Hash: hashOf("y"), Start: "naïve"}},
		{"Prefix", keystore.ImportKeyRequest{Hash: hashOf("y"), CreateKeyRequest: keystore.CreateKeyRequest{Prefix: "sk"}}},
		{"ByteLength", keystore.ImportKeyRequest{Hash: hashOf("y"), CreateKeyRequest: keystore.CreateKeyRequest{ByteLength: 32}}},
	}
	for _, c := range bad {
		req := c.req
		req.WorkspaceID, req.KeySpaceID, req.ExternalID = "ws", "ks", "customer-2"
		_, err := s.ImportKey(ctx, req)
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != c.field {
			t.Errorf("%s: %v", c.field, err)
		}
	}
	_, err = s.ImportKey(ctx, keystore.ImportKeyRequest{Hash: hashOf("z"),
		CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Roles: []string{"missing"}}})
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("missing role: %v", err)
	}
	if after := rowsInAllTables(t, db); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused imports wrote: %v -> %v", before, after)
	}
}

// ImportKeys takes a batch in one transaction: every key verifies
// afterwards, owners shared within the batch exist once, and one bad
// request refuses the whole batch, naming it.
func TestImportKeys(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "reader", "docs.read")
	var reqs []keystore.ImportKeyRequest
	for i := range keystore.MaxImportBatch {
		req := keystore.ImportKeyRequest{Hash: hashOf(fmt.Sprintf("old_key_%d", i)),
			CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
				ExternalID: fmt.Sprintf("customer-%d", i%100), Permissions: []string{fmt.Sprintf("p%d", i%7), "all"}}}
		if i%10 == 0 {
			req.Roles = []string{"reader"}
		}
		if i%250 == 0 {
			req.WorkspaceID = "other"
			req.Roles = nil
		}
		reqs = append(reqs, req)
	}
	badBatch := slices.Clone(reqs[:3])
	badBatch[1].Hash = "nothex"
	_, err := s.ImportKeys(ctx, badBatch)
	var ve *keystore.ValidationError
	if !errors.As(err, &ve) || ve.Field != "[1].Hash" {
		t.Fatalf("bad batch: %v", err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); n != 0 {
		t.Fatalf("a refused batch wrote %d keys", n)
	}
	created, err := s.ImportKeys(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != len(reqs) {
		t.Fatalf("%d created", len(created))
	}
	for _, i := range []int{0, 1, 10, 250, 999} {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: fmt.Sprintf("old_key_%d", i)})
		if err != nil || !v.Valid || v.KeyID != created[i].KeyID || v.ExternalID != fmt.Sprintf("customer-%d", i%100) ||
			slices.Contains(v.Permissions, "docs.read") != (i%10 == 0 && i%250 != 0) {
			t.Fatalf("key %d: %+v, %v", i, v, err)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities`); n != 100+2 {
		t.Fatalf("%d identities, want 102 (100 in ws, customer-0 and -50 in other)", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_audit_events WHERE event = 'key.import'`); n != 1000 {
		t.Fatalf("%d key.import events", n)
	}
	checkCachedSets(t, db)
	checkOwnerCopies(t, db)
	if _, err := s.ImportKeys(ctx, make([]keystore.ImportKeyRequest, keystore.MaxImportBatch+1)); !errors.Is(err, keystore.ErrInvalidInput) {
		t.Fatalf("oversized batch: %v", err)
	}
}

// Batches that race on the same new owners all succeed and leave one
// identity per owner.
func TestImportKeysConcurrent(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	failOnErrors(t, parallel(8, func(b int) error {
		var reqs []keystore.ImportKeyRequest
		for i := range 50 {
			reqs = append(reqs, keystore.ImportKeyRequest{Hash: hashOf(fmt.Sprintf("k-%d-%d", b, i)),
				CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
					ExternalID: fmt.Sprintf("shared-%d", (i+b)%20), Permissions: []string{fmt.Sprintf("p%d", (i*b)%9)}}})
		}
		_, err := s.ImportKeys(ctx, reqs)
		return err
	}))
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities`); n != 20 {
		t.Fatalf("%d identities after racing imports of 20 owners", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); n != 400 {
		t.Fatalf("%d keys", n)
	}
	checkOwnerCopies(t, db)
	checkCachedSets(t, db)
}

// BenchmarkImportKeys imports b.N keys in batches of MaxImportBatch, each
// with an owner (one per 10 keys) and two permissions; run it with
// -benchtime 100000x for the 100,000 keys.
func BenchmarkImportKeys(b *testing.B) {
	s, _ := newStore(b)
	ctx := context.Background()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(keystore.MaxImportBatch, b.N-done)
		reqs := make([]keystore.ImportKeyRequest, n)
		for i := range reqs {
			k := done + i
			reqs[i] = keystore.ImportKeyRequest{Hash: hashOf(fmt.Sprintf("bench-%d", k)),
				CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
					ExternalID: fmt.Sprintf("owner-%d", k/10), Permissions: []string{"read", fmt.Sprintf("p%d", k%50)}}}
		}
		if _, err := s.ImportKeys(ctx, reqs); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}

// A full batch with many permissions per key imports through a pool whose
// statements are prepared on the server (no interpolateParams), which allows
// 65,535 placeholders a statement; an empty batch imports nothing.
func TestImportKeysLargeBatchPrepared(t *testing.T) {
	s, db := storeOn(t, withParams(t, keystoretest.DSN(t), map[string]string{"interpolateParams": "false"}), 0)
	ctx := context.Background()
	if created, err := s.ImportKeys(ctx, nil); err != nil || len(created) != 0 {
		t.Fatalf("empty batch: %v, %v", created, err)
	}
	var perms []string
	for i := range 40 {
		perms = append(perms, fmt.Sprintf("perm.%02d", i))
	}
	reqs := make([]keystore.ImportKeyRequest, keystore.MaxImportBatch)
	for i := range reqs {
		reqs[i] = keystore.ImportKeyRequest{Hash: hashOf(fmt.Sprintf("big-%d", i)),
			CreateKeyRequest: keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: perms,
				ExternalID: fmt.Sprintf("o-%d", i)}}
	}
	if _, err := s.ImportKeys(ctx, reqs); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_key_permissions`); n != 40*keystore.MaxImportBatch {
		t.Fatalf("%d links", n)
	}
}
