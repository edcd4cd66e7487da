package keystore_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// A lock-wait timeout (1205) is retried after a rollback, then surfaced as
// ErrRetriesExhausted wrapping the 1205; the lock holder is unaffected.
func TestWithRetryTxLockWaitTimeoutExhausts(t *testing.T) {
	_, db := newStore(t)
	ctx := context.Background()
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)`)
	db.MustExec(`INSERT INTO t VALUES (1, 0)`)

	holder, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(`UPDATE t SET v = 100 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}

	var attempts, retries atomic.Int32
	_, err = keystore.WithRetryTx(ctx, db, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		attempts.Add(1)
		if _, err := tx.ExecContext(ctx, `SET SESSION innodb_lock_wait_timeout = 1`); err != nil {
			return struct{}{}, err
		}
		_, err := tx.ExecContext(ctx, `UPDATE t SET v = v + 1 WHERE id = 1`)
		return struct{}{}, err
	}, keystore.MaxAttempts(3), keystore.Backoff(time.Millisecond, time.Millisecond),
		keystore.OnRetry(func(int, error) { retries.Add(1) }))

	if !errors.Is(err, keystore.ErrRetriesExhausted) {
		t.Fatalf("err = %v, want ErrRetriesExhausted", err)
	}
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1205 || !keystore.IsRetryable(me) {
		t.Fatalf("err = %v, want it to wrap a retryable 1205", err)
	}
	var re *keystore.RetryError
	if !errors.As(err, &re) || re.Attempts != 3 {
		t.Fatalf("err = %#v, want a *RetryError with 3 attempts", err)
	}
	if attempts.Load() != 3 || retries.Load() != 2 {
		t.Fatalf("attempts %d, retries %d; want 3 and 2", attempts.Load(), retries.Load())
	}
	if err := holder.Commit(); err != nil {
		t.Fatalf("lock holder failed to commit: %v", err)
	}
	if v := count(t, db, `SELECT v FROM t WHERE id = 1`); v != 100 {
		t.Fatalf("v = %d, want the holder's 100", v)
	}
}

func TestWithRetryTxDoesNotRetryOtherErrors(t *testing.T) {
	_, db := newStore(t)
	ctx := context.Background()
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)
	db.MustExec(`INSERT INTO t VALUES (1)`)
	mine := errors.New("caller's own error")

	for name, fn := range map[string]func(ctx context.Context, tx *sqlx.Tx) (int, error){
		"caller error": func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (2)`); err != nil {
				return 0, err
			}
			return 0, mine
		},
		"duplicate key": func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (3)`); err != nil {
				return 0, err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`)
			return 0, err
		},
	} {
		t.Run(name, func(t *testing.T) {
			var attempts int
			_, err := keystore.WithRetryTx(ctx, db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				attempts++
				return fn(ctx, tx)
			})
			if err == nil || attempts != 1 {
				t.Fatalf("err %v after %d attempts; want an error after 1", err, attempts)
			}
			if errors.Is(err, keystore.ErrRetriesExhausted) {
				t.Fatalf("err = %v: a non-retryable error must come back as it is", err)
			}
			if n := count(t, db, `SELECT COUNT(*) FROM t`); n != 1 {
				t.Fatalf("%d rows in t, want 1: the failed transaction was not rolled back", n)
			}
		})
	}
}

func TestWithRetryTxContextCancelsBackoff(t *testing.T) {
	_, db := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var attempts int
	start := time.Now()
	_, err := keystore.WithRetryTx(ctx, db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
		attempts++
		return 0, &mysql.MySQLError{Number: 1213, Message: "Deadlock found (simulated)"}
	}, keystore.MaxAttempts(1000), keystore.Backoff(10*time.Second, 10*time.Second))
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if elapsed > 5*time.Second {
		t.Fatalf("returned after %v: the backoff sleep ignored ctx", elapsed)
	}
	if attempts > 5 {
		t.Fatalf("%d attempts within a 10 s backoff", attempts)
	}
	if st := db.Stats(); st.InUse != 0 {
		t.Fatalf("%d connections still in use", st.InUse)
	}
}

func TestWithRetryTxRollsBackOnPanic(t *testing.T) {
	_, db := newStore(t)
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the panic of fn", p)
			}
		}()
		keystore.WithRetryTx(context.Background(), db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			tx.MustExecContext(ctx, `INSERT INTO t VALUES (1)`)
			panic("boom")
		})
	}()
	if n := count(t, db, `SELECT COUNT(*) FROM t`); n != 0 {
		t.Fatalf("%d rows after a panic, want 0", n)
	}
	if st := db.Stats(); st.InUse != 0 {
		t.Fatalf("%d connections still in use after the panic", st.InUse)
	}
}

func TestWithRetryTxReturnsValueAndRetriesUntilSuccess(t *testing.T) {
	_, db := newStore(t)
	var attempts int
	v, err := keystore.WithRetryTx(context.Background(), db, func(ctx context.Context, tx *sqlx.Tx) (string, error) {
		attempts++
		if attempts < 3 {
			return "", &mysql.MySQLError{Number: 1020, Message: "Record has changed since last read (simulated)"}
		}
		var s string
		return s, tx.GetContext(ctx, &s, `SELECT 'done'`)
	}, keystore.Backoff(time.Millisecond, time.Millisecond))
	if err != nil || v != "done" || attempts != 3 {
		t.Fatalf("got %q, %v after %d attempts; want done, nil, 3", v, err, attempts)
	}
}

// A context that ends before BEGIN, or while a statement runs, ends the
// call promptly with the context's error, rolls back, and returns the
// connection to the pool.
func TestWithRetryTxContextEndsMidStatement(t *testing.T) {
	_, db := newStore(t)
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	var attempts int
	_, err := keystore.WithRetryTx(canceled, db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
		attempts++
		return 0, nil
	})
	if !errors.Is(err, context.Canceled) || attempts != 0 {
		t.Fatalf("canceled before BEGIN: %v after %d attempts, want context.Canceled and none", err, attempts)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = keystore.WithRetryTx(ctx, db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
		attempts++
		if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
			return 0, err
		}
		_, err := tx.ExecContext(ctx, `SELECT SLEEP(3)`)
		return 0, err
	})
	if elapsed := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || elapsed > 2*time.Second {
		t.Fatalf("deadline mid-statement: %v after %v, want DeadlineExceeded promptly", err, elapsed)
	}
	if attempts != 1 {
		t.Fatalf("%d attempts: a context error must not be retried", attempts)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM t`); n != 0 {
		t.Fatalf("%d rows: the interrupted transaction was not rolled back", n)
	}
	if st := db.Stats(); st.InUse != 0 {
		t.Fatalf("%d connections still in use", st.InUse)
	}
}

// CreateKey under a context that has ended writes nothing, whether it
// would have sent its statements one by one (permissions) or as one block,
// and says so: the error is not ErrAmbiguousCommit.
func TestCreateKeyWithEndedContextWritesNothing(t *testing.T) {
	s, db := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, perms := range [][]string{{"p"}, nil} {
		_, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u", Permissions: perms})
		if !errors.Is(err, context.Canceled) || errors.Is(err, keystore.ErrAmbiguousCommit) {
			t.Fatalf("permissions %v: err = %v, want context.Canceled, not ambiguous", perms, err)
		}
	}
	for table, n := range rowsInAllTables(t, db) {
		if n != 0 {
			t.Errorf("%s has %d rows", table, n)
		}
	}
}

// When the context ends, database/sql rolls the transaction back on its
// own, and a statement or COMMIT that races that rollback gets
// sql.ErrTxDone. WithRetryTx returns the context's error instead, and
// nothing is written.
func TestWithRetryTxContextEndRacingRollback(t *testing.T) {
	_, db := newStore(t)
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY)`)
	for _, atCommit := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := keystore.WithRetryTx(ctx, db, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
				return 0, err
			}
			cancel()
			// Wait until database/sql has rolled the transaction back.
			for {
				_, err := tx.ExecContext(context.Background(), `SELECT 1`)
				if errors.Is(err, sql.ErrTxDone) {
					if atCommit {
						return 0, nil // COMMIT then meets the rollback
					}
					return 0, err
				}
				time.Sleep(time.Millisecond)
			}
		})
		if !errors.Is(err, context.Canceled) || errors.Is(err, sql.ErrTxDone) {
			t.Fatalf("at commit %v: %v, want the context's error, not sql.ErrTxDone", atCommit, err)
		}
		if n := count(t, db, `SELECT COUNT(*) FROM t`); n != 0 {
			t.Fatalf("at commit %v: %d rows written", atCommit, n)
		}
	}
}
