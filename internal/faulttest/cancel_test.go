package faulttest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// prompt is how soon after its context ends a call must return. The faults
// below would otherwise hold it for seconds (ioTimeout, a 10 s backoff).
const prompt = time.Second

// TestContextEndsAtEveryStage: a context that ends before BEGIN, while a
// statement's reply is delayed by the network, while the network swallows
// everything (half-open), or while WithRetryTx sleeps between attempts, ends
// the call promptly with the context's error, and the pool's connections
// are all back (none in use).
func TestContextEndsAtEveryStage(t *testing.T) {
	f := newFixture(t)
	store, err := keystore.New(f.Proxied)
	if err != nil {
		t.Fatal(err)
	}
	req := keystore.CreateKeyRequest{WorkspaceID: "ws_cancel", KeySpaceID: "ks", ExternalID: "cancel",
		Permissions: []string{"cancel.read"}}
	// Warm the pool so that the stages below hit statements, not dials.
	if _, err := store.CreateKey(context.Background(), req); err != nil {
		t.Fatal(err)
	}

	// expect runs call with a context that ends after d (0: already
	// canceled) and checks the error, the time taken and the pool.
	expect := func(t *testing.T, d time.Duration, want error, call func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		if d == 0 {
			cancel()
		} else {
			ctx, cancel = context.WithTimeout(context.Background(), d)
		}
		defer cancel()
		start := time.Now()
		err := call(ctx)
		took := time.Since(start)
		if !errors.Is(err, want) {
			t.Errorf("error %v, want %v", err, want)
		}
		if took > d+prompt {
			t.Errorf("returned %v after the context ended, want within %v", took-d, prompt)
		}
		waitIdle(t, f.Proxied)
	}
	createKey := func(ctx context.Context) error {
		_, err := store.CreateKey(ctx, req)
		return err
	}

	t.Run("before BEGIN", func(t *testing.T) {
		expect(t, 0, context.Canceled, createKey)
	})

	t.Run("reply delayed", func(t *testing.T) {
		// Every reply takes 1.5 s; the context ends during the first one
		// (BEGIN's or the first statement's).
		addToxic(t, f.Proxy, toxic{Name: "slow", Type: "latency", Stream: "downstream", Toxicity: 1,
			Attributes: map[string]any{"latency": 1500}})
		defer removeToxic(t, f.Proxy, "slow")
		expect(t, 200*time.Millisecond, context.DeadlineExceeded, createKey)
	})

	t.Run("half-open", func(t *testing.T) {
		// Nothing the client sends arrives; without the context only the
		// DSN's readTimeout would end the call.
		addToxic(t, f.Proxy, toxic{Name: "blackhole", Type: "timeout", Stream: "upstream", Toxicity: 1,
			Attributes: map[string]any{"timeout": 0}})
		defer removeToxic(t, f.Proxy, "blackhole")
		expect(t, 200*time.Millisecond, context.DeadlineExceeded, createKey)
	})

	t.Run("during backoff", func(t *testing.T) {
		// Every attempt fails with a deadlock and the backoff is up to 10 s:
		// the context ends while WithRetryTx sleeps (or, if a sleep drew a
		// short time, in the next attempt).
		attempts := 0
		expect(t, 200*time.Millisecond, context.DeadlineExceeded, func(ctx context.Context) error {
			_, err := keystore.WithRetryTx(ctx, f.Proxied, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				attempts++
				if _, err := tx.ExecContext(ctx, "SELECT 1"); err != nil {
					return 0, err
				}
				return 0, &mysql.MySQLError{Number: 1213, Message: "Deadlock found (simulated)"}
			}, keystore.MaxAttempts(1000), keystore.Backoff(5*time.Second, 10*time.Second))
			return err
		})
		if attempts == 0 {
			t.Error("no attempt ran")
		}
	})

	// Nothing the canceled calls did was committed, and the Store works.
	if _, err := store.CreateKey(context.Background(), req); err != nil {
		t.Fatalf("CreateKey after the cancellations: %v", err)
	}
	var keys int
	if err := f.Direct.Get(&keys, `SELECT COUNT(*) FROM keystore_keys WHERE workspace_id = 'ws_cancel'`); err != nil {
		t.Fatal(err)
	}
	if keys != 2 {
		t.Errorf("%d keys, want 2 (the calls before and after)", keys)
	}
}
