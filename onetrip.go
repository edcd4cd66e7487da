package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// A transaction in one round trip.
//
// A transaction whose statements do not depend on each other's answers (no
// rows read by the client, no affected-rows check between them) goes to
// MariaDB as one anonymous compound statement that begins the transaction,
// runs them, may read one value back, and commits:
//
//	BEGIN NOT ATOMIC
//	  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
//	  START TRANSACTION; <statements>; [SELECT ...;] COMMIT;
//	END
//
// The handler rolls back on the first error a statement raises and raises
// it again, so such a failure leaves no transaction open and its error
// number (1062, 1213, ...) reaches the caller as if that statement had been
// sent alone. The server counts the block as one statement (Questions).
// Statements that would otherwise look at an answer are written so that
// the server does: CreateKey's key INSERT ... SELECT reads the owner, the
// SELECT says which one it got, and requireRowWritten stops the block when
// the owner was not there.
//
// Why: a short transaction's cost is mostly its round trips, and a block
// saves all but one of them (BenchmarkCreateKey measures it against a bare
// one-INSERT transaction and the seed's code; docs/benchmarks.md has the
// numbers). Over a real network the saving is three round trips per call.
//
// Costs, and what the Store does about them:
//   - The COMMIT travels with the statements, so when the connection fails
//     or ctx ends while the block runs, whether it committed is unknown. A
//     transaction of several round trips has that window only around its
//     COMMIT. A block that carries a receipt (CreateKey's) is settled
//     (settle.go); any other such failure is ErrAmbiguousCommit (and still
//     the cause, say context.DeadlineExceeded).
//   - Errors that interrupt the block rather than a statement (KILL QUERY
//     1317, max_statement_time 1969) run no handler and may come at any
//     point, COMMIT included: they are unknown outcomes too, and the
//     connection, which may hold the open transaction, is closed. Any other
//     server error was raised by a statement and rolled back by the
//     handler; it is returned as it is, and the connection is kept only
//     for the errors tests have seen (raisedByStatement).
//   - MySQL, and proxies that parse SQL, have no anonymous blocks. The
//     server's syntax error runs nothing; the Store remembers it and sends
//     such transactions statement by statement from then on, as it does
//     when its retry options set TxOptions (a block would not apply them).
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
// with the Store's policy like [WithRetryTx]. When read has a query, a
// query of one column, it runs last before the COMMIT and execOneTrip
// returns that column of its first row ("" for none or NULL). It returns
// errNoOneTrip, having written nothing, when the Store cannot (see above).
//
// stmts include the trail built for the pending receipt ctx carries (with
// its change feed); a block whose reply was lost is settled with it (settle.go), and read then
// runs again on its own.
func (s *Store) execOneTrip(ctx context.Context, read statement, stmts ...statement) (string, error) {
	if s.noOneTrip.Load() || s.retryConfig.txOptions != nil {
		return "", errNoOneTrip
	}
	if err := s.session.verify(ctx, s.db); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("BEGIN NOT ATOMIC DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END; START TRANSACTION; ")
	var args []any
	p := pendingFrom(ctx)
	for _, st := range slices.Concat(stmts, []statement{read, {query: "COMMIT"}}) {
		if st.query != "" {
			b.WriteString(st.query)
			b.WriteString("; ")
			args = append(args, st.args...)
		}
	}
	b.WriteString("END")
	query := b.String()
	defer s.changedHere(p)
	return retry(ctx, &s.retryConfig, func() (string, error) {
		value, err := s.oneTrip(ctx, p, query, args)
		if err == nil || p == nil {
			return value, err
		}
		if err := s.settled(ctx, p, err); err != nil || read.query == "" {
			return "", err
		}
		return s.readBack(ctx, p, read)
	})
}

// readBack runs read on its own for a block that was settled as
// committed, trying for the settle timeout. It never returns an error that
// retry would run the committed block again for: when the server stays
// unreachable, the error is an *AmbiguousCommitError with p's receipt.
func (s *Store) readBack(ctx context.Context, p *pending, read statement) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.settleTimeout)
	defer cancel()
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		var v sql.NullString
		err := s.db.GetContext(ctx, &v, read.query, read.args...)
		if err == nil {
			return v.String, nil
		}
		if sleep(ctx, pause) != nil {
			r := p.receipt
			return "", &AmbiguousCommitError{Err: fmt.Errorf("keystore: read back after a settled commit: %w", err), Receipt: &r}
		}
	}
}

// oneTrip is one attempt of execOneTrip, recording its connection in p
// (when not nil).
func (s *Store) oneTrip(ctx context.Context, p *pending, query string, args []any) (string, error) {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if p != nil {
		if err := p.sentOn(ctx, conn); err != nil {
			return "", err
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err // nothing sent
	}
	value, err := queryAll(ctx, conn, query, args)
	if err == nil {
		return value, nil
	}
	if isParseError(err) || isUnsupportedPrepare(err) {
		s.noOneTrip.Store(true)
		return "", errNoOneTrip
	}
	if errors.Is(err, driver.ErrBadConn) {
		return "", err // the driver sent nothing
	}
	n, ok := serverErrorNumber(err)
	if !ok || lostConnection(n) || n == errQueryInterrupted || n == errStatementTimeout {
		discard(conn)
		return "", &AmbiguousCommitError{Err: err}
	}
	// A statement raised it and the handler rolled back. A connection
	// whose error was not seen in tests is closed all the same.
	if !raisedByStatement(n) {
		discard(conn)
	}
	return "", err
}

// queryAll runs query and reads every result it sends, so that an error
// that follows a result set is not lost, and returns the first column of
// the first row of the first result ("" for none or NULL).
func queryAll(ctx context.Context, conn *sqlx.Conn, query string, args []any) (string, error) {
	rows, err := conn.QueryContext(ctx, query, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var value sql.NullString
	if rows.Next() {
		if err := rows.Scan(&value); err != nil {
			return "", err
		}
	}
	for more := true; more; more = rows.NextResultSet() {
		for rows.Next() {
		}
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	return value.String, rows.Close()
}

// raisedByStatement reports whether server error n is one a statement of
// the block was seen to raise and its exit handler to roll back (1062,
// 1205, 1213 and requireRowWritten's 1644 in onetrip_test.go; 1020 is of
// the same kind), so that the connection can go back to the pool.
func raisedByStatement(n uint16) bool {
	return n == errDupEntry || n == errLockDeadlock || n == errLockWaitTimeout || n == errRecordChanged ||
		n == errSignalException
}

// requireRowWritten, placed after a statement of a block, ends the block
// when that statement changed no row: the handler rolls back what ran
// before it, and the block fails with an error that isNoRowWritten
// recognises. It stands in for the client's check of rows affected.
var requireRowWritten = statement{query: `IF ROW_COUNT() = 0 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'keystore: no row written'; END IF`}

// isNoRowWritten reports whether err is requireRowWritten's.
func isNoRowWritten(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errSignalException
}

// isUnsupportedPrepare reports whether err is the server refusing to
// prepare a statement (1295), as a server may refuse the block when the
// DSN does not set interpolateParams.
func isUnsupportedPrepare(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errUnsupportedPS
}
