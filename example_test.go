package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// The examples run against the test server, each on a database of its
// own from keystoretest.Database. A service opens its own DSN instead,
// such as "app:secret@tcp(db:3306)/app?parseTime=true&interpolateParams=true".

// exampleStore opens a migrated Store on a fresh database and returns it
// with a function that closes and drops everything.
func exampleStore() (*keystore.Store, *sqlx.DB, func()) {
	dsn, drop, err := keystoretest.Database()
	if err != nil {
		log.Fatal(err)
	}
	db, err := sqlx.Open("mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	store, err := keystore.New(db)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(context.Background()); err != nil {
		log.Fatal(err)
	}
	return store, db, func() { store.Close(); db.Close(); drop() }
}

func ExampleStore_CreateKey() {
	store, _, done := exampleStore() // keystore.New and Migrate, on a fresh test database
	defer done()
	ctx := context.Background()

	created, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
		WorkspaceID: "ws_acme",
		KeySpaceID:  "ks_production",
		Prefix:      "acme",
		ExternalID:  "customer-42", // its identity is found or created, race-free
		Permissions: []string{"documents.read"},
		Ratelimits:  []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("plaintext, shown once and never stored:", created.Key[:len("acme_")]+"...")

	// Invalid input names the field, and nothing is written.
	_, err = store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_acme", KeySpaceID: "ks_production",
		Prefix: "acme-live"})
	var invalid *keystore.ValidationError
	if errors.As(err, &invalid) { // also errors.Is(err, keystore.ErrInvalidInput)
		fmt.Printf("400: %s %s\n", invalid.Field, invalid.Reason)
	}
	// Output:
	// plaintext, shown once and never stored: acme_...
	// 400: Prefix must match [A-Za-z0-9_]
}

func ExampleStore_UpdateKey() {
	store, _, done := exampleStore() // keystore.New and Migrate, on a fresh test database
	defer done()
	ctx := context.Background()
	expires := time.Now().Add(24 * time.Hour)
	created, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_acme", KeySpaceID: "ks_production",
		ExternalID: "customer-42", Expires: &expires})
	if err != nil {
		log.Fatal(err)
	}

	// Only the fields that are Set or Null change.
	key, err := store.UpdateKey(ctx, keystore.UpdateKeyRequest{
		WorkspaceID: "ws_acme",
		KeyID:       created.KeyID,
		Name:        keystore.Set("CI pipeline"),
		ExternalID:  keystore.Set("customer-43"), // move to another owner, found or created
		Expires:     keystore.Null[time.Time](),  // never expires
		Permissions: keystore.Set([]string{"documents.write", "documents.read"}),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(key.Name, key.ExternalID, key.Expires == nil, key.Permissions)

	_, err = store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws_other", KeyID: created.KeyID,
		Name: keystore.Set("x")})
	fmt.Println(errors.Is(err, keystore.ErrNotFound)) // another workspace's key
	// Output:
	// CI pipeline customer-43 true [documents.read documents.write]
	// true
}

func ExampleStore_VerifyKey() {
	store, _, done := exampleStore() // keystore.New and Migrate, on a fresh test database
	defer done()
	ctx := context.Background()
	created, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_acme", KeySpaceID: "ks_production",
		Credits: &keystore.Credits{Remaining: 2}})
	if err != nil {
		log.Fatal(err)
	}

	for range 3 {
		v, err := store.VerifyKey(ctx, keystore.VerifyKeyRequest{
			WorkspaceID: "ws_acme", KeySpaceID: "ks_production", Key: created.Key, // spends 1 credit
		})
		if err != nil {
			log.Fatal(err) // the database failed: answer 503, never "valid"
		}
		fmt.Println(v.Valid, v.Code, *v.Remaining)
	}
	// An unknown key is an answer, not an error.
	v, err := store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks_production", Key: "acme_unknown"})
	fmt.Println(v.Valid, v.Code, err)
	// Output:
	// true VALID 1
	// true VALID 0
	// false USAGE_EXCEEDED 0
	// false NOT_FOUND <nil>
}

// WithRetryTx also serves the application's own transactions: here a
// transfer between two rows of its own table, which deadlocks when two
// transfers in opposite directions meet, and is then run again from BEGIN.
func ExampleWithRetryTx() {
	_, db, done := exampleStore() // a pool on a fresh test database
	defer done()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id INT PRIMARY KEY, credits INT NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO accounts VALUES (1, 100), (2, 0)`); err != nil {
		log.Fatal(err)
	}

	move := func(ctx context.Context, tx *sqlx.Tx) (int64, error) {
		for _, step := range []struct{ account, delta int64 }{{1, -10}, {2, +10}} {
			if _, err := tx.ExecContext(ctx, `UPDATE accounts SET credits = credits + ? WHERE id = ?`,
				step.delta, step.account); err != nil {
				return 0, fmt.Errorf("move credits: %w", err) // %w: keep it recognisably retryable
			}
		}
		var left int64
		err := tx.GetContext(ctx, &left, `SELECT credits FROM accounts WHERE id = 1`)
		return left, err // no side effects outside tx: fn may run several times
	}
	left, err := keystore.WithRetryTx(ctx, db, move, keystore.MaxAttempts(5),
		keystore.OnRetry(func(attempt int, err error) { log.Printf("attempt %d: %v", attempt, err) }))
	switch {
	case errors.Is(err, keystore.ErrAmbiguousCommit):
		log.Fatal("the transfer may have been applied; check before repeating it: ", err)
	case errors.Is(err, keystore.ErrRetriesExhausted):
		log.Fatal("still deadlocking after 5 attempts: ", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("account 1 has", left)
	// Output:
	// account 1 has 90
}

// Field is tri-state: the zero value leaves the stored value alone, Set
// replaces it and Null clears it.
func ExampleSet() {
	req := keystore.UpdateKeyRequest{
		WorkspaceID: "ws_acme",
		KeyID:       "key_0123456789abcdef",
		Name:        keystore.Set("renamed"),
		Expires:     keystore.Null[time.Time](),
		// Meta is not mentioned: it stays as it is.
	}
	name, ok := req.Name.Value()
	fmt.Printf("Name:    present=%v null=%v value=%q ok=%v\n", req.Name.Present(), req.Name.IsNull(), name, ok)
	_, ok = req.Expires.Value()
	fmt.Printf("Expires: present=%v null=%v ok=%v\n", req.Expires.Present(), req.Expires.IsNull(), ok)
	fmt.Printf("Meta:    present=%v\n", req.Meta.Present())
	// Output:
	// Name:    present=true null=false value="renamed" ok=true
	// Expires: present=true null=true ok=false
	// Meta:    present=false
}

// A call returns ErrAmbiguousCommit only when the server stayed out of
// reach for the Store's whole settle timeout. Keep the receipt, and settle
// it once the server is back: committed is final either way. (Not run:
// the server here never goes away.)
func ExampleStore_Settle() {
	store, _, done := exampleStore()
	defer done()
	ctx := context.Background()

	created, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_1", KeySpaceID: "ks_1"})
	var unknown *keystore.AmbiguousCommitError
	if errors.As(err, &unknown) && unknown.Receipt != nil {
		// ... later, when the database answers again:
		committed, err := store.Settle(ctx, *unknown.Receipt)
		if err != nil {
			log.Fatal(err) // still out of reach: try again later
		}
		if committed {
			// Its plaintext is lost with the reply: delete the key, or
			// leave it unused.
			fmt.Println("key", unknown.KeyID, "exists")
		} else {
			fmt.Println("nothing was written, nor ever will be: create it again")
		}
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(created.KeyID != "")
}

func ExampleWithVerifyCache() {
	admin, db, done := exampleStore() // keystore.New and Migrate, on a fresh test database
	defer done()
	ctx := context.Background()

	// The API's Store answers from memory, and never more than a second
	// behind a change made through any Store, in any process.
	api, err := keystore.New(db, keystore.WithVerifyCache(100_000, time.Second))
	if err != nil {
		log.Fatal(err)
	}
	key, err := admin.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws_acme", KeySpaceID: "ks_production"})
	if err != nil {
		log.Fatal(err)
	}
	verify := func() keystore.VerificationCode {
		v, err := api.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks_production", Key: key.Key})
		if errors.Is(err, keystore.ErrTooManyUnknownKeys) {
			return "503, Retry-After: 1" // a flood of made-up keys; known keys still verify
		}
		if err != nil {
			log.Fatal(err)
		}
		return v.Code
	}
	fmt.Println(verify())

	if _, err := admin.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws_acme", KeyID: key.KeyID,
		Enabled: keystore.Set(false)}); err != nil {
		log.Fatal(err)
	}
	time.Sleep(time.Second) // the bound: from here on every answer has the change
	fmt.Println(verify())
	// Output:
	// VALID
	// DISABLED
}
