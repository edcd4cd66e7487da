package keystore_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idsafe/keystore"
)

// BenchmarkVerifyKey compares VerifyKey with the floor it is held to: a bare
// SELECT of one row by the same unique index (the key hash), on the same
// server and key, in one run:
//
//	bare-select-row   SELECT * FROM keystore_keys WHERE hash = ?: the row
//	bare-select-id    SELECT id FROM keystore_keys WHERE hash = ?: answered
//	                  from the index alone (id is the primary key, stored in
//	                  every secondary index entry), so it never reads the row
//	verify-unlimited  VerifyKey of a key without credits (with an owner, a
//	                  permission, a role and a ratelimit: everything it returns)
//	verify-credits    VerifyKey of a key with credits: one conditional UPDATE more
//	verify-ratelimit  VerifyKey of a key without credits but with one
//	                  auto-applied ratelimit that never denies: its token
//	                  transaction more (the target is 0.8x of
//	                  verify-unlimited)
//	verify-cached     verify-unlimited on a Store WithVerifyCache (bound
//	                  1 s), warmed: answered from memory, with a poll of
//	                  the change feed every quarter second
//
// at concurrency 1 and 16, and verify-credits on one hot key from 64
// goroutines. Metrics as in BenchmarkCreateKey.
func BenchmarkVerifyKey(b *testing.B) {
	for _, c := range []int{1, 16, 64} {
		for _, shape := range rotated([]string{"verify-unlimited", "verify-credits", "verify-ratelimit", "verify-cached", "bare-select-row", "bare-select-id"}) {
			if c == 64 && shape != "verify-credits" {
				continue
			}
			b.Run(fmt.Sprintf("c=%d/shape=%s", c, shape), func(b *testing.B) { benchVerify(b, c, shape) })
		}
	}
}

func benchVerify(b *testing.B, workers int, shape string) {
	ctx := context.Background()
	var opts []keystore.Option
	if shape == "verify-cached" {
		opts = append(opts, keystore.WithVerifyCache(10_000, time.Second))
	}
	store, db := newStore(b, opts...)
	createRole(b, db, benchWorkspace, "reader")
	req := keystore.CreateKeyRequest{WorkspaceID: benchWorkspace, KeySpaceID: benchKeySpace, ExternalID: "owner",
		Permissions: []string{"read"}, Roles: []string{"reader"},
		Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 10, Duration: time.Second}}}
	switch shape {
	case "verify-credits":
		req.Credits = &keystore.Credits{Remaining: 1 << 40}
	case "verify-ratelimit":
		req.Ratelimits = append(req.Ratelimits, keystore.Ratelimit{Name: "hourly", Limit: 1 << 40, Duration: time.Hour, AutoApply: true})
	}
	key, err := store.CreateKey(ctx, req)
	if err != nil {
		b.Fatal(err)
	}
	hash := sha256Sum(key.Key)
	op := func() error {
		v, err := store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: benchKeySpace, Key: key.Key})
		if err == nil && !v.Valid {
			err = fmt.Errorf("verification %s", v.Code)
		}
		return err
	}
	switch shape {
	case "verify-cached":
		for store.VerifyCacheStats().Hits == 0 {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
	case "bare-select-id":
		op = func() error {
			var id string
			return db.GetContext(ctx, &id, `SELECT id FROM keystore_keys WHERE hash = ?`, hash)
		}
	case "bare-select-row":
		op = func() error {
			rows, err := db.QueryContext(ctx, `SELECT * FROM keystore_keys WHERE hash = ?`, hash)
			if err != nil {
				return err
			}
			defer rows.Close()
			if !rows.Next() {
				return errors.New("no row")
			}
			return rows.Err()
		}
	}
	errs := measured(b, db, min(workers, 90), func(timed func(i int, op func() error)) {
		runWorkers(b.N, workers, func(i int) { timed(i, op) })
	})
	for _, err := range errs {
		if err != nil {
			b.Logf("e.g. %v", err)
			break
		}
	}
}

func sha256Sum(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}
