package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
)

// A transaction in one round trip.
//
// A transaction whose statements do not depend on each other's answers (no
// rows read by the client, no affected-rows check between them) goes to
// MariaDB as one anonymous compound statement that begins the transaction,
// runs them, commits, and may then read one value back:
//
//	BEGIN NOT ATOMIC
//	  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
//	  START TRANSACTION; <statements>; COMMIT; [SELECT ...;]
//	END
//
// The handler rolls back on the first error and raises it again, so a
// failed block leaves no transaction open and its error number (1062, 1213,
// ...) reaches the caller as if that statement had been sent alone. The
// server counts the block as one statement (Questions). Statements that
// would otherwise look at an answer are written so that the server does:
// CreateKey's key INSERT ... SELECT reads the owner, and the final SELECT
// says which one it got.
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
// with the Store's policy like [WithRetryTx]. After the COMMIT, in the same
// round trip, it runs read, a query of one column, if it has one, and
// returns that column of its first row ("" for none or NULL). It returns
// errNoOneTrip, having written nothing, on servers that cannot (see above).
func (s *Store) execOneTrip(ctx context.Context, read statement, stmts ...statement) (string, error) {
	if s.noOneTrip.Load() {
		return "", errNoOneTrip
	}
	var b strings.Builder
	b.WriteString("BEGIN NOT ATOMIC DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END; START TRANSACTION; ")
	var args []any
	write := func(st statement) {
		b.WriteString(st.query)
		b.WriteString("; ")
		args = append(args, st.args...)
	}
	for _, st := range stmts {
		write(st)
	}
	write(statement{query: "COMMIT"})
	if read.query != "" {
		write(read)
	}
	b.WriteString("END")
	query := b.String()
	return retry(ctx, &s.retryConfig, func() (string, error) {
		return s.oneTrip(ctx, query, args, read.query != "")
	})
}

// oneTrip is one attempt of execOneTrip; read says whether the block ends
// with a query.
func (s *Store) oneTrip(ctx context.Context, query string, args []any, read bool) (string, error) {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := ctx.Err(); err != nil {
		return "", err // nothing sent
	}
	var value sql.NullString
	if read {
		err = conn.QueryRowContext(ctx, query, args...).Scan(&value)
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
	} else {
		_, err = conn.ExecContext(ctx, query, args...)
	}
	if err == nil {
		return value.String, nil
	}
	if isParseError(err) || isUnsupportedPrepare(err) {
		s.noOneTrip.Store(true)
		return "", errNoOneTrip
	}
	if errors.Is(err, driver.ErrBadConn) {
		return "", err // the driver sent nothing
	}
	n, ok := serverErrorNumber(err)
	if !ok || lostConnection(n) {
		discard(conn)
		return "", &AmbiguousCommitError{Err: err}
	}
	if !caughtByHandler(n) {
		discard(conn)
	}
	return "", err
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
