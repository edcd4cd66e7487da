package faulttest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// Faults aimed at COMMIT, made certain rather than left to chance:
//
//   - the reply to COMMIT is lost (the server committed): ErrAmbiguousCommit,
//     not retried, and the row is there;
//   - COMMIT never reaches the server (it rolls back when the connection
//     closes): also ErrAmbiguousCommit, because the client cannot tell the
//     two apart, not retried, and the row is absent;
//   - the connection breaks before COMMIT: the server rolled back, so the
//     transaction runs again and the row is there exactly once.
func TestFaultsAtCommit(t *testing.T) {
	for _, c := range []struct {
		name      string
		stream    string // where the toxic that swallows everything goes
		ambiguous bool
		rows      int
	}{
		{"reply to COMMIT lost", "downstream", true, 1},
		{"COMMIT never arrives", "upstream", true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.Direct.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)
			attempts := 0
			_, err := keystore.WithRetryTx(context.Background(), f.Proxied, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				attempts++
				if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
					return 0, err
				}
				// From now on nothing passes in one direction, and the
				// link closes 200 ms later: COMMIT is sent into it.
				addToxic(t, f.Proxy, toxic{Name: "cut", Type: "timeout", Stream: c.stream, Toxicity: 1,
					Attributes: map[string]any{"timeout": 200}})
				time.Sleep(50 * time.Millisecond) // the proxy applies toxics to live links asynchronously
				return 0, nil
			}, keystore.Backoff(time.Millisecond, time.Millisecond))
			removeToxic(t, f.Proxy, "cut")
			if got := errors.Is(err, keystore.ErrAmbiguousCommit); got != c.ambiguous || attempts != 1 {
				t.Fatalf("err = %v after %d attempts; want ambiguous=%v after 1", err, attempts, c.ambiguous)
			}
			var n int
			if err := f.Direct.Get(&n, `SELECT COUNT(*) FROM t`); err != nil || n != c.rows {
				t.Fatalf("%d rows (%v), want %d", n, err, c.rows)
			}
			waitIdle(t, f.Proxied)
		})
	}

	t.Run("connection breaks before COMMIT", func(t *testing.T) {
		f := newFixture(t)
		f.Direct.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)
		attempts := 0
		_, err := keystore.WithRetryTx(context.Background(), f.Proxied, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			attempts++
			if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
				return 0, err
			}
			if attempts == 1 {
				addToxic(t, f.Proxy, toxic{Name: "reset", Type: "reset_peer", Stream: "upstream", Toxicity: 1,
					Attributes: map[string]any{"timeout": 0}})
				time.Sleep(50 * time.Millisecond)
				_, err := tx.ExecContext(ctx, `SELECT 1`) // breaks: the server rolls the transaction back
				return 0, err
			}
			return 0, nil
		}, keystore.Backoff(time.Millisecond, time.Millisecond),
			keystore.OnRetry(func(int, error) { removeToxic(t, f.Proxy, "reset") }))
		if err != nil || attempts != 2 {
			t.Fatalf("err = %v after %d attempts; want success on the 2nd", err, attempts)
		}
		var n int
		if err := f.Direct.Get(&n, `SELECT COUNT(*) FROM t`); err != nil || n != 1 {
			t.Fatalf("%d rows (%v), want exactly 1", n, err)
		}
		waitIdle(t, f.Proxied)
	})
}
