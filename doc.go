// Package keystore persists API keys and the identities that own them in
// MariaDB or MySQL, and stays correct under any concurrency.
//
// Creating a key for a new owner is a get-or-create of the owner's identity
// followed by inserts. Done naively (find, else insert), two concurrent
// requests for one new owner race: one gets a duplicate-key error (1062) or
// a deadlock (1213) and fails. keystore wins that race inside the
// transaction with locks that cannot deadlock each other (see identity.go),
// and runs every write in [WithRetryTx], which retries what is safe to retry
// and never a COMMIT whose outcome is unknown. So every concurrent caller
// succeeds, exactly one identity exists, and nothing is half-written.
//
//	store, err := keystore.New(db) // db: *sqlx.DB on the primary
//	if err := store.Migrate(ctx); err != nil { ... }
//	key, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
//		WorkspaceID: "ws_1", KeySpaceID: "ks_1", Prefix: "sk", ExternalID: "customer-42",
//	})
//	// key.Key is the plaintext, shown once; the store keeps its SHA-256 hash.
//
// A [Store] is safe for concurrent use. Errors are matched with errors.Is:
// [ErrInvalidInput] (nothing was written; errors.As gives the
// *[ValidationError] naming the field), [ErrNotFound], [ErrRetriesExhausted]
// and [ErrAmbiguousCommit].
//
// [WithVerifyCache] answers VerifyKey from memory, with a hard bound on
// how stale an answer can be across every process: each change writes a
// change feed in its own transaction, which caching Stores poll.
//
// Reads that may be as stale as a replica's lag can go to a read replica
// ([WithReplica]); writes and credit spends never do, and a replica that
// misses, fails or hangs costs a bounded wait, never an error. Galera
// clusters and TiDB/Vitess error numbers are handled; see the README's
// Compatibility section for what was tested.
//
// For tests against a real server, see package
// github.com/idsafe/keystore/keystoretest.
package keystore
