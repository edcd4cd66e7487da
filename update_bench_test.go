package keystore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// BenchmarkUpdateKeyLink is issue 4's scenario (d), UpdateKey storms linking
// many keys to one new externalId: b.N keys without an owner are created
// before the timer; timed, bursts of 64 goroutines are released together,
// each linking a different key to the burst's new externalId. Shapes:
//
//	keystore          Store.UpdateKey with ExternalID set (the key row
//	                  locked, then the identity found or created as in
//	                  CreateKey, the audit event, the key read back)
//	keystore-noaudit  the same, with WithoutAudit
//	seed-naive        BEGIN; plain SELECT of the identity; INSERT it when
//	                  missing; UPDATE the key's identity_id (and
//	                  updated_at); COMMIT. No retry: a 1062 is an error
//	seed-retry3       the same, the whole transaction up to 3 times, no
//	                  backoff, on 1062/1213, the identity read again outside
//	                  the transaction after a duplicate (as seed-retry3 in
//	                  BenchmarkCreateKey)
//
// Names are BenchmarkUpdateKeyLink/c=N/shape=X, where N goroutines are
// released together on each new externalId (1, 16 and 64); metrics as in
// BenchmarkCreateKey. Every run gets a fresh database.
func BenchmarkUpdateKeyLink(b *testing.B) {
	for _, burst := range []int{1, 16, hotBurst} {
		for _, sh := range rotated(linkShapes()) {
			b.Run(fmt.Sprintf("c=%d/shape=%s", burst, sh.name), func(b *testing.B) { benchUpdateKeyLink(b, burst, sh) })
		}
	}
}

// linkBaseline links the key keyID to the identity of externalID.
type linkBaseline func(ctx context.Context, db *sqlx.DB, workspace, keyID, externalID string) error

type linkShape struct {
	name string
	fn   linkBaseline // nil for keystore
	opts []keystore.Option
}

func linkShapes() []linkShape {
	return []linkShape{
		{name: "keystore"},
		{name: "keystore-noaudit", opts: []keystore.Option{keystore.WithoutAudit()}},
		{name: "seed-naive", fn: seedLinkNaive},
		{name: "seed-retry3", fn: seedLinkRetry3},
	}
}

func benchUpdateKeyLink(b *testing.B, burst int, sh linkShape) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ctx, store, db, counters := newBenchStore(ctx, b, sh.opts...)
	keyIDs := createUnownedKeys(ctx, b, db, b.N)

	op := func(ctx context.Context, keyID, externalID string) error {
		_, err := store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: benchWorkspace, KeyID: keyID,
			ExternalID: keystore.Set(externalID)})
		return err
	}
	if sh.fn != nil {
		op = func(ctx context.Context, keyID, externalID string) error {
			return sh.fn(ctx, db, benchWorkspace, keyID, externalID)
		}
	}
	// seed-retry3 reads on a second connection while its transaction holds one.
	errs := measured(b, db, min(2*burst, 90), func(timed func(i int, op func() error)) {
		runBursts(b.N, burst, func(n, i int) {
			timed(i, func() error { return op(ctx, keyIDs[i], fmt.Sprintf("link-%d", n)) })
		})
	})
	counters.report(b, sh.name, errs)

	// Every call that returned nil linked its key: the keys left unowned
	// are exactly the failed calls.
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if unowned := count(b, db, `SELECT COUNT(*) FROM keystore_keys WHERE identity_id IS NULL`); unowned != failed {
		b.Errorf("%d keys left without owner, %d calls failed", unowned, failed)
	}
}

// createUnownedKeys creates n keys without owner through a Store of its own
// (so that its retries, if any, are not counted), on 16 workers, and
// returns their ids.
func createUnownedKeys(ctx context.Context, b *testing.B, db *sqlx.DB, n int) []string {
	b.Helper()
	s, err := keystore.New(db, keystore.WithoutAudit())
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	var mu sync.Mutex
	var firstErr error
	runWorkers(n, 16, func(i int) {
		k, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: benchWorkspace, KeySpaceID: benchKeySpace})
		if err != nil {
			mu.Lock()
			firstErr = err
			mu.Unlock()
			return
		}
		ids[i] = k.KeyID
	})
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return ids
}

func seedLinkNaive(ctx context.Context, db *sqlx.DB, workspace, keyID, externalID string) error {
	return seedLinkAttempt(ctx, db, workspace, keyID, externalID, false)
}

func seedLinkRetry3(ctx context.Context, db *sqlx.DB, workspace, keyID, externalID string) error {
	return retry3(ctx, func() error { return seedLinkAttempt(ctx, db, workspace, keyID, externalID, true) })
}

// seedLinkAttempt is one transaction of the seed's shapes: find-then-insert
// of the identity (seedIdentity; with reread, a duplicate is read again
// outside the transaction), then the UPDATE of the key.
func seedLinkAttempt(ctx context.Context, db *sqlx.DB, workspace, keyID, externalID string, reread bool) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // sends nothing after Commit
	identityID, err := seedIdentity(ctx, db, tx, workspace, externalID, reread)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE keystore_keys SET identity_id = ?, updated_at = ?
		WHERE id = ? AND workspace_id = ?`, identityID, time.Now().UTC(), keyID, workspace); err != nil {
		return err
	}
	return tx.Commit()
}
