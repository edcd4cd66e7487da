package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver
	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// The examples below need a server, so they are compiled but not run. Their
// DSN looks like "user:password@tcp(127.0.0.1:3306)/app?interpolateParams=true".

func ExampleStore_CreateKey() {
	db, err := sqlx.Open("mysql", os.Getenv("KEYSTORE_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	store, err := keystore.New(db)
	if err != nil {
		log.Fatal(err)
	}

	created, err := store.CreateKey(context.Background(), keystore.CreateKeyRequest{
		WorkspaceID: "ws_acme",
		KeySpaceID:  "ks_production",
		Prefix:      "acme",
		ExternalID:  "customer-42", // its identity is found or created, race-free
		Permissions: []string{"documents.read"},
		Ratelimits:  []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute}},
	})
	var invalid *keystore.ValidationError
	switch {
	case errors.As(err, &invalid): // also errors.Is(err, keystore.ErrInvalidInput)
		fmt.Printf("400: %s %s\n", invalid.Field, invalid.Reason)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("show once, never stored:", created.Key)
	}
}

func ExampleStore_UpdateKey() {
	db, err := sqlx.Open("mysql", os.Getenv("KEYSTORE_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	store, err := keystore.New(db)
	if err != nil {
		log.Fatal(err)
	}

	// Only the fields that are Set or Null change.
	key, err := store.UpdateKey(context.Background(), keystore.UpdateKeyRequest{
		WorkspaceID: "ws_acme",
		KeyID:       "key_0123456789abcdef",
		Name:        keystore.Set("CI pipeline"),
		ExternalID:  keystore.Set("customer-43"), // move to another owner
		Expires:     keystore.Null[time.Time](),  // never expires
		Permissions: keystore.Set([]string{"documents.read", "documents.write"}),
	})
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		fmt.Println("404: no such key")
	case errors.Is(err, keystore.ErrInvalidInput):
		fmt.Println("400:", err)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(key.Name, key.ExternalID, key.Permissions)
	}
}

// WithRetryTx also serves the application's own transactions: here a
// transfer between two rows of its own table, which deadlocks when two
// transfers in opposite directions meet, and is then run again from BEGIN.
func ExampleWithRetryTx() {
	db, err := sqlx.Open("mysql", os.Getenv("KEYSTORE_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	move := func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		for _, step := range []struct{ account, delta int64 }{{1, -10}, {2, +10}} {
			if _, err := tx.ExecContext(ctx, `UPDATE accounts SET credits = credits + ? WHERE id = ?`,
				step.delta, step.account); err != nil {
				return struct{}{}, fmt.Errorf("move credits: %w", err) // %w: keep it recognisably retryable
			}
		}
		return struct{}{}, nil // no side effects outside tx: fn may run several times
	}
	_, err = keystore.WithRetryTx(context.Background(), db, move, keystore.MaxAttempts(5),
		keystore.OnRetry(func(attempt int, err error) { log.Printf("attempt %d: %v", attempt, err) }))
	switch {
	case errors.Is(err, keystore.ErrAmbiguousCommit):
		log.Fatal("the transfer may have been applied; check before repeating it: ", err)
	case errors.Is(err, keystore.ErrRetriesExhausted):
		log.Fatal("still deadlocking after 5 attempts: ", err)
	case err != nil:
		log.Fatal(err)
	}
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
