package keystore_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// oneTripStore returns a Store (with opts) on a fresh database with a
// table t of rows (1, 0) and (2, 0), its pool of one connection, so that
// what a block leaves on its connection is seen by the next statement, and
// a second pool on the database. It skips on servers without anonymous
// blocks (MySQL), where the Store never sends one.
func oneTripStore(t *testing.T, opts ...keystore.Option) (s *keystore.Store, db, other *sqlx.DB) {
	t.Helper()
	dsn := keystoretest.DSN(t)
	s, db = storeOn(t, dsn, 1, opts...)
	if !isMariaDB(t, db) {
		t.Skip("no anonymous compound statements on this server; the statement-by-statement path is tested instead")
	}
	db.MustExec(`CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)`)
	db.MustExec(`INSERT INTO t VALUES (1, 0), (2, 0)`)
	_, other = storeOn(t, dsn, 2)
	return s, db, other
}

// connectionState returns the connection's id and whether a transaction is
// open on it.
func connectionState(t *testing.T, db *sqlx.DB) (id int64, inTransaction bool) {
	t.Helper()
	if err := db.QueryRow(`SELECT CONNECTION_ID(), @@in_transaction`).Scan(&id, &inTransaction); err != nil {
		t.Fatal(err)
	}
	return id, inTransaction
}

// A failed block undoes its earlier statements, surfaces the failing
// statement's own error, and leaves its connection, still open, with no
// transaction.
func TestOneTripRollsBackOnError(t *testing.T) {
	s, db, _ := oneTripStore(t)
	conn, _ := connectionState(t, db)
	err := keystore.ExecOneTrip(context.Background(), s,
		`UPDATE t SET v = 1 WHERE id = 2`, `INSERT INTO t VALUES (1, 1)`)
	if !keystore.IsDuplicateKey(err) {
		t.Fatalf("err = %v, want the INSERT's 1062", err)
	}
	if v := count(t, db, `SELECT v FROM t WHERE id = 2`); v != 0 {
		t.Errorf("v = %d: the UPDATE before the failure was committed", v)
	}
	if id, inTx := connectionState(t, db); id != conn || inTx {
		t.Errorf("after the failed block: connection %d (was %d), in a transaction: %v; want the same one, in none", id, conn, inTx)
	}
}

// A block that a lock-wait timeout (1205) stops rolls back its earlier
// statements too (a 1205 on its own rolls back only its statement), and is
// retried like a transaction.
func TestOneTripLockWaitTimeout(t *testing.T) {
	var retries atomic.Int32
	s, db, other := oneTripStore(t, keystore.WithRetryOptions(keystore.MaxAttempts(2),
		keystore.Backoff(time.Millisecond, time.Millisecond), keystore.OnRetry(func(int, error) { retries.Add(1) })))
	holder := lockRow(t, other, `UPDATE t SET v = 100 WHERE id = 1`)
	err := keystore.ExecOneTrip(context.Background(), s,
		`UPDATE t SET v = 1 WHERE id = 2`, `SET STATEMENT innodb_lock_wait_timeout = 1 FOR UPDATE t SET v = v + 1 WHERE id = 1`)
	var me *mysql.MySQLError
	if !errors.Is(err, keystore.ErrRetriesExhausted) || !errors.As(err, &me) || me.Number != 1205 {
		t.Fatalf("err = %v, want ErrRetriesExhausted wrapping 1205", err)
	}
	if retries.Load() != 1 {
		t.Errorf("%d retries, want 1", retries.Load())
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	if v := count(t, other, `SELECT v FROM t WHERE id = 2`); v != 0 {
		t.Errorf("v = %d: the UPDATE before the timeout was committed", v)
	}
	if _, inTx := connectionState(t, db); inTx {
		t.Error("the block's connection went back to the pool in a transaction")
	}
}

// lockRow begins a transaction on db that runs update, and returns it.
func lockRow(t *testing.T, db *sqlx.DB, update string) *sqlx.Tx {
	t.Helper()
	tx, err := db.BeginTxx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	if _, err := tx.Exec(update); err != nil {
		t.Fatal(err)
	}
	return tx
}

// A block that a deadlock picks as its victim is rolled back by the server
// and run again whole: both transactions apply exactly once.
func TestOneTripDeadlockIsRetried(t *testing.T) {
	var retries atomic.Int32
	s, _, other := oneTripStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(_ int, err error) {
		if keystore.IsDeadlock(err) {
			retries.Add(1)
		}
	})))
	// The holder changes more rows than the block, so InnoDB picks the block
	// as the victim.
	holder := lockRow(t, other, `INSERT INTO t SELECT seq + 10, 0 FROM seq_1_to_50`)
	if _, err := holder.Exec(`UPDATE t SET v = v + 10 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- keystore.ExecOneTrip(context.Background(), s, `UPDATE t SET v = v + 1 WHERE id = 2`, `UPDATE t SET v = v + 1 WHERE id = 1`)
	}()
	for deadline := time.Now().Add(10 * time.Second); lockWaits(t, other) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the block never waited for the holder's lock")
		}
	}
	if _, err := holder.Exec(`UPDATE t SET v = v + 10 WHERE id = 2`); err != nil {
		t.Fatalf("the holder was the deadlock's victim: %v", err)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if retries.Load() != 1 {
		t.Errorf("%d deadlock retries, want 1", retries.Load())
	}
	for id, want := range map[int]int{1: 11, 2: 11} {
		if v := count(t, other, `SELECT v FROM t WHERE id = ?`, id); v != want {
			t.Errorf("row %d: v = %d, want %d (each transaction once)", id, v, want)
		}
	}
}

// When ctx ends while a block runs, whether it committed is unknown: the
// error says so and still matches ctx's error; nothing is retried.
func TestOneTripContextEndsMidBlock(t *testing.T) {
	s, _, other := oneTripStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := keystore.ExecOneTrip(ctx, s, `UPDATE t SET v = 1 WHERE id = 1`, `DO SLEEP(2)`)
	if !errors.Is(err, keystore.ErrAmbiguousCommit) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrAmbiguousCommit and DeadlineExceeded", err)
	}
	// Here it did commit: the server ran the block to its end.
	deadline := time.Now().Add(10 * time.Second)
	for count(t, other, `SELECT v FROM t WHERE id = 1`) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the abandoned block never committed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A server that does not know the block's syntax (MySQL) gets it once; the
// Store then sends transactions statement by statement, and CreateKey
// still creates the key and its owner.
func TestOneTripUnsupportedFallsBack(t *testing.T) {
	s, db, _ := oneTripStore(t)
	ctx := context.Background()
	if err := keystore.ExecOneTrip(ctx, s, `NOT A STATEMENT`); !errors.Is(err, keystore.ErrNoOneTrip) {
		t.Fatalf("err = %v, want ErrNoOneTrip", err)
	}
	var created keystore.CreatedKey
	n := statements(t, db, func() {
		var err error
		if created, err = s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"}); err != nil {
			t.Fatal(err)
		}
	})
	if n != 5 {
		t.Errorf("CreateKey after the fallback: %d statements, want 5 (BEGIN, 2 INSERTs, audit, COMMIT)", n)
	}
	if k, err := s.GetKey(ctx, "ws", created.KeyID); err != nil || k.IdentityID != created.IdentityID || k.ExternalID != "u" {
		t.Fatalf("GetKey = %+v, %v; want the key owned by %s", k, err, created.IdentityID)
	}
}
