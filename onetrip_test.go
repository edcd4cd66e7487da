package keystore_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
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
	_, other = storeOn(t, dsn, 4)
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
	_, err := keystore.ExecOneTrip(context.Background(), s, "",
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

// RequireRowWritten ends a block whose previous statement changed no row,
// undoing what came before, and lets one that changed a row go on.
func TestOneTripRequireRowWritten(t *testing.T) {
	s, db, _ := oneTripStore(t)
	conn, _ := connectionState(t, db)
	ctx := context.Background()
	_, err := keystore.ExecOneTrip(ctx, s, "", `UPDATE t SET v = 1 WHERE id = 2`,
		`UPDATE t SET v = 1 WHERE id = 3`, keystore.RequireRowWritten, `UPDATE t SET v = 1 WHERE id = 1`)
	if !keystore.IsNoRowWritten(err) || keystore.IsRetryable(err) || errors.Is(err, keystore.ErrAmbiguousCommit) {
		t.Fatalf("err = %v, want the guard's error, definite and not retryable", err)
	}
	if n := count(t, db, `SELECT SUM(v) FROM t`); n != 0 {
		t.Errorf("%d rows updated by the stopped block, want 0", n)
	}
	if id, inTx := connectionState(t, db); id != conn || inTx {
		t.Errorf("after the stopped block: connection %d (was %d), in a transaction: %v; want the same one, in none", id, conn, inTx)
	}
	if _, err := keystore.ExecOneTrip(ctx, s, "", `UPDATE t SET v = 1 WHERE id = 2`, keystore.RequireRowWritten,
		`UPDATE t SET v = 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT SUM(v) FROM t`); n != 2 {
		t.Errorf("%d rows updated by the block that wrote its row, want 2", n)
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
	_, err := keystore.ExecOneTrip(context.Background(), s, "",
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
		_, err := keystore.ExecOneTrip(context.Background(), s, "", `UPDATE t SET v = v + 1 WHERE id = 2`, `UPDATE t SET v = v + 1 WHERE id = 1`)
		done <- err
	}()
	waitLockWaits(t, other, 1)
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
	_, err := keystore.ExecOneTrip(ctx, s, "", `UPDATE t SET v = 1 WHERE id = 1`, `DO SLEEP(2)`)
	if !errors.Is(err, keystore.ErrAmbiguousCommit) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrAmbiguousCommit and DeadlineExceeded", err)
	}
	// Here it did commit: the server ran the block to its end.
	waitForCount(t, other, `SELECT v FROM t WHERE id = 1`, 1, "the abandoned block never committed")
}

// A server that does not know the block's syntax (MySQL) gets it once; the
// Store then sends transactions statement by statement, and CreateKey
// still creates the key and its owner.
func TestOneTripUnsupportedFallsBack(t *testing.T) {
	s, db, _ := oneTripStore(t)
	ctx := context.Background()
	if _, err := keystore.ExecOneTrip(ctx, s, "", `NOT A STATEMENT`); !errors.Is(err, keystore.ErrNoOneTrip) {
		t.Fatalf("err = %v, want ErrNoOneTrip", err)
	}
	// The first write on a connection asks for its thread id (settle.go):
	// not what is counted here.
	if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil {
		t.Fatal(err)
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

// A block's read comes back, and sees the block's own writes.
func TestOneTripRead(t *testing.T) {
	s, _, other := oneTripStore(t)
	got, err := keystore.ExecOneTrip(context.Background(), s, `SELECT v FROM t WHERE id = 2`, `UPDATE t SET v = 7 WHERE id = 2`)
	if err != nil || got != "7" {
		t.Fatalf("read %q, %v; want 7", got, err)
	}
	if v := count(t, other, `SELECT v FROM t WHERE id = 2`); v != 7 {
		t.Errorf("v = %d, want 7 committed", v)
	}
}

// An error that interrupts the block, not a statement (here
// max_statement_time, arriving after the read's result set has begun), runs
// no handler: the error is ambiguous, nothing is retried, and the
// connection, which held the open transaction, is closed, so nothing
// commits.
func TestOneTripInterruptedIsAmbiguous(t *testing.T) {
	var retries atomic.Int32
	s, db, other := oneTripStore(t, keystore.WithRetryOptions(keystore.OnRetry(func(int, error) { retries.Add(1) })))
	db.MustExec(`SET SESSION max_statement_time = 1`) // the pool's one connection
	conn, _ := connectionState(t, db)
	_, err := keystore.ExecOneTrip(context.Background(), s, `SELECT IF(SLEEP(3) = 0, 'slept', 'interrupted')`, `UPDATE t SET v = 1 WHERE id = 2`)
	var me *mysql.MySQLError
	if !errors.Is(err, keystore.ErrAmbiguousCommit) || !errors.As(err, &me) || me.Number != 1969 {
		t.Fatalf("err = %v, want ErrAmbiguousCommit wrapping 1969", err)
	}
	if retries.Load() != 0 {
		t.Errorf("%d retries of an ambiguous block", retries.Load())
	}
	if v := count(t, other, `SELECT v FROM t WHERE id = 2`); v != 0 {
		t.Errorf("v = %d: the interrupted block committed", v)
	}
	if id, inTx := connectionState(t, db); id == conn || inTx {
		t.Errorf("connection %d (was %d), in a transaction: %v; want a new one, in none", id, conn, inTx)
	}
}

// A Store whose retry options set TxOptions does not send blocks, which
// would not apply them.
func TestOneTripNotWithTxOptions(t *testing.T) {
	s, _, _ := oneTripStore(t, keystore.WithRetryOptions(keystore.TxOptions(&sql.TxOptions{Isolation: sql.LevelReadCommitted})))
	if _, err := keystore.ExecOneTrip(context.Background(), s, "", `DO 1`); !errors.Is(err, keystore.ErrNoOneTrip) {
		t.Fatalf("err = %v, want ErrNoOneTrip", err)
	}
}

// CreateKey whose ctx ends while its block waits (here for a racing
// creator of the owner) settles the block's outcome: the Store ends the
// block's server thread, finds that it did not commit, and returns ctx's
// error. Nothing of it commits once the racer has rolled back.
func TestCreateKeyContextEndsMidBlock(t *testing.T) {
	s, _, other := oneTripStore(t)
	racer := lockRow(t, other, `INSERT INTO keystore_identities (id, workspace_id, external_id, live, created_at, updated_at)
		VALUES ('id_racer', 'ws', 'u', 1, NOW(6), NOW(6))`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, keystore.ErrAmbiguousCommit) {
		t.Fatalf("err = %v, want DeadlineExceeded and not ErrAmbiguousCommit", err)
	}
	if err := racer.Rollback(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := count(t, other, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'u'`) +
		count(t, other, `SELECT COUNT(*) FROM keystore_keys`); n != 0 {
		t.Errorf("%d identities and keys written by a call that returned ctx's error", n)
	}
}

// waitForCount waits up to 10 s for query to count want, and fails with
// msg if it never does.
func waitForCount(t *testing.T, db *sqlx.DB, query string, want int, msg string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); count(t, db, query) != want; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
	}
}

// The owner is deleted between CreateKey's two blocks (the first found it
// there, the second finds it gone): the second writes nothing and the
// transaction path creates the next owner, with one key, its copies and
// both events.
func TestCreateKeyOwnerDeletedBetweenBlocks(t *testing.T) {
	s, db, other := oneTripStore(t)
	ctx := context.Background()
	racer := lockRow(t, other, `INSERT INTO keystore_identities (id, workspace_id, external_id, live, created_at, updated_at)
		VALUES ('id_racer', 'ws', 'u', 1, NOW(6), NOW(6))`)
	type result struct {
		created keystore.CreatedKey
		err     error
	}
	done := make(chan result, 1)
	go func() {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u"})
		done <- result{c, err}
	}()
	waitForStuckQuery(t, other, `INSERT INTO keystore_identities%`) // the first block, on the racer's row
	// A deleter queues for the row behind it. When the racer commits, the
	// first block fails with 1062 and rolls back, the deleter locks the
	// row, and the second block waits for the deleter.
	deleter, err := other.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleter.Rollback() })
	locked := make(chan error, 1)
	go func() {
		_, err := deleter.Exec(`SELECT id FROM keystore_identities WHERE workspace_id = 'ws' AND external_id = 'u' AND live = 1 FOR UPDATE`)
		locked <- err
	}()
	waitForStuckQuery(t, other, `SELECT id FROM keystore_identities%FOR UPDATE`)
	if err := racer.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-locked; err != nil {
		t.Fatal(err)
	}
	waitForStuckQuery(t, other, `INSERT INTO keystore_keys%FROM keystore_identities WHERE%`) // the second block, on the deleter's lock
	if _, err := deleter.Exec(`UPDATE keystore_identities SET live = NULL, deleted_at = NOW(6) WHERE id = 'id_racer'`); err != nil {
		t.Fatal(err)
	}
	if err := deleter.Commit(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.created.IdentityID == "id_racer" || r.created.IdentityID == "" {
		t.Fatalf("key owned by %q, want a new owner", r.created.IdentityID)
	}
	k, err := s.GetKey(ctx, "ws", r.created.KeyID)
	if err != nil || k.IdentityID != r.created.IdentityID || k.ExternalID != "u" {
		t.Fatalf("GetKey = %+v, %v; want owned by %s, external id u", k, err, r.created.IdentityID)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys`); n != 1 {
		t.Errorf("%d keys, want 1", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE live = 1`); n != 1 {
		t.Errorf("%d live identities, want 1", n)
	}
	if got := events(t, db, "ws"); !slices.Equal(got, []string{keystore.EventKeyCreate, keystore.EventIdentityCreate}) {
		t.Errorf("events %v, want key.create and identity.create once", got)
	}
}

// waitForStuckQuery waits until a statement of db's database that matches
// pattern (LIKE; in a compound statement, the statement it is at) has run
// for 200 ms. A lock wait that MariaDB enters while
// it plans a statement reading one row by a unique key, as these do, does
// not show in INNODB_TRX; this sees it.
func waitForStuckQuery(t *testing.T, db *sqlx.DB, pattern string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); count(t, db, `SELECT COUNT(*) FROM information_schema.PROCESSLIST
		WHERE DB = DATABASE() AND INFO LIKE ? AND TIME_MS > 200`, pattern) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no statement like %q waited", pattern)
		}
	}
}

// Any other error a statement raises (here a missing table, as before
// Migrate) is rolled back by the handler and returned as it is: not
// ambiguous, nothing written, no transaction left open.
func TestOneTripStatementErrorIsNotAmbiguous(t *testing.T) {
	s, db, other := oneTripStore(t)
	_, err := keystore.ExecOneTrip(context.Background(), s, "", `UPDATE t SET v = 1 WHERE id = 2`, `INSERT INTO no_such_table VALUES (1)`)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1146 || errors.Is(err, keystore.ErrAmbiguousCommit) {
		t.Fatalf("err = %v, want 1146 and not ErrAmbiguousCommit", err)
	}
	if v := count(t, other, `SELECT v FROM t WHERE id = 2`); v != 0 {
		t.Errorf("v = %d: the UPDATE before the failure was committed", v)
	}
	if _, inTx := connectionState(t, db); inTx {
		t.Error("a transaction was left open")
	}
}
