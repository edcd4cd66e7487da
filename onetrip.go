package keystore

import (
	"context"
	"database/sql/driver"
	"errors"
	"strings"
)

// A transaction in one round trip.
//
// A transaction whose statements need nothing back from the server but
// success (no rows read, no affected-rows check) goes to MariaDB as one
// anonymous compound statement that begins the transaction, runs them and
// commits:
//
//	BEGIN NOT ATOMIC
//	  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
//	  START TRANSACTION; <statements>; COMMIT;
//	END
//
// The handler rolls back on the first error and raises it again, so a
// failed block leaves no transaction open and its error number (1062, 1213,
// ...) reaches the caller as if that statement had been sent alone. The
// server counts the block as one statement (Questions).
//
// Why: on this project's benchmark machine a transaction's cost is mostly
// its round trips. CreateKey of a new owner is BEGIN, two INSERTs and
// COMMIT; sent one by one, it reached 0.63-0.65x the throughput of a bare
// one-INSERT transaction (BEGIN, INSERT, COMMIT) at 16 goroutines, and as
// one block 0.85-1.0x (BenchmarkCreateKey, scenario new, keystore-noaudit
// against floor, 3 runs each). Over a real network the saving is three
// round trips per call.
//
// Costs, and what the Store does about them:
//   - The COMMIT travels with the statements, so when the connection fails
//     or ctx ends while the block runs, whether it committed is unknown: the
//     error matches ErrAmbiguousCommit (and still the cause, say
//     context.DeadlineExceeded). A transaction of several round trips has
//     that window only around its COMMIT.
//   - MySQL, and proxies that parse SQL, have no anonymous blocks. The
//     server's syntax error runs nothing; the Store remembers it and sends
//     such transactions statement by statement from then on.
//   - An error that no handler catches would leave the transaction open on
//     the connection; the block runs on a connection of its own, which is
//     closed unless the error is one the handler is known to have caught.
//
// Neither multiStatements nor literal values are involved: the block is one
// statement with placeholders, sent like any other.

// statement is one SQL statement and its arguments.
type statement struct {
	query string
	args  []any
}

// errNoOneTrip: the server does not run transactions in one round trip; the
// caller sends the statements one by one instead.
var errNoOneTrip = errors.New("keystore: server has no anonymous compound statements")

// execOneTrip runs stmts as one transaction in one round trip, retried
// with the Store's policy like [WithRetryTx]. It returns errNoOneTrip, having
// written nothing, on servers that cannot (see above).
func (s *Store) execOneTrip(ctx context.Context, stmts ...statement) error {
	if s.noOneTrip.Load() {
		return errNoOneTrip
	}
	var b strings.Builder
	b.WriteString("BEGIN NOT ATOMIC DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END; START TRANSACTION; ")
	var args []any
	for _, st := range stmts {
		b.WriteString(st.query)
		b.WriteString("; ")
		args = append(args, st.args...)
	}
	b.WriteString("COMMIT; END")
	query := b.String()
	_, err := retry(ctx, &s.retryConfig, func() (struct{}, error) {
		return struct{}{}, s.oneTrip(ctx, query, args)
	})
	return err
}

// oneTrip is one attempt of execOneTrip.
func (s *Store) oneTrip(ctx context.Context, query string, args []any) error {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := ctx.Err(); err != nil {
		return err // nothing sent
	}
	_, err = conn.ExecContext(ctx, query, args...)
	if err == nil {
		return nil
	}
	if isParseError(err) || isUnsupportedPrepare(err) {
		s.noOneTrip.Store(true)
		return errNoOneTrip
	}
	if errors.Is(err, driver.ErrBadConn) {
		return err // the driver sent nothing
	}
	n, ok := serverErrorNumber(err)
	if !ok || lostConnection(n) {
		discard(conn)
		return &AmbiguousCommitError{Err: err}
	}
	if !caughtByHandler(n) {
		discard(conn)
	}
	return err
}

// caughtByHandler reports whether server error n is one the block's exit
// handler was seen to catch (its rollback tested in onetrip_test.go), so
// that the connection can go back to the pool.
func caughtByHandler(n uint16) bool {
	return n == errDupEntry || n == errLockDeadlock || n == errLockWaitTimeout
}

// isUnsupportedPrepare reports whether err is the server refusing to
// prepare a statement (1295), as a server may refuse the block when the
// DSN does not set interpolateParams.
func isUnsupportedPrepare(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errUnsupportedPS
}
