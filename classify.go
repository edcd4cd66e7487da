package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// Server error numbers the library acts on.
const (
	errDupEntry              = 1062 // ER_DUP_ENTRY: the statement was rolled back
	errLockDeadlock          = 1213 // ER_LOCK_DEADLOCK: the whole transaction was rolled back
	errLockWaitTimeout       = 1205 // ER_LOCK_WAIT_TIMEOUT: only the statement was rolled back
	errServerShutdown        = 1053 // ER_SERVER_SHUTDOWN: connection closed, transaction rolled back
	errConnectionKilled      = 1927 // ER_CONNECTION_KILLED (MariaDB)
	errClientIdleTimeout     = 4031 // MySQL 8.0.24+: idle connection closed by the server
	errParse                 = 1064 // ER_PARSE_ERROR: only the statement was rolled back
	errUnknown               = 1105 // ER_UNKNOWN_ERROR: Vitess may carry the real number in the message
	errSyntax                = 1149 // ER_SYNTAX_ERROR: how Vitess reports syntax it does not know
	errUnsupportedPS         = 1295 // ER_UNSUPPORTED_PS: a statement the server will not prepare
	errRecordChanged         = 1020 // ER_CHECKREAD (MariaDB): record changed since the snapshot
	errQueryInterrupted      = 1317 // ER_QUERY_INTERRUPTED: KILL QUERY
	errStatementTimeout      = 1969 // ER_STATEMENT_TIMEOUT (MariaDB): max_statement_time
	errSignalException       = 1644 // ER_SIGNAL_EXCEPTION: SIGNAL SQLSTATE '45000' (requireRowWritten)
	errUnknownThread         = 1094 // ER_NO_SUCH_THREAD: KILL of a thread that is gone
	errNoSuchTable           = 1109 // ER_UNKNOWN_TABLE: information_schema.GLOBAL_STATUS on MySQL
	errUnknownSystemVariable = 1193 // ER_UNKNOWN_SYSTEM_VARIABLE: wsrep_sync_wait without Galera support
	errClientGone            = 2006 // CR_SERVER_GONE_ERROR: Vitess's connection to MySQL broke, as "(errno 2006)"
	errClientLost            = 2013 // CR_SERVER_LOST: the same, mid-query
)

// lostConnection reports whether a server error number says the connection
// to the database broke or was closed, rolling back an open transaction.
// 2006 and 2013 are client codes, which reach us only from a proxy (Vitess)
// that lost its own connection to MySQL.
func lostConnection(n uint16) bool {
	switch n {
	case errServerShutdown, errConnectionKilled, errClientGone, errClientLost:
		return true
	}
	return false
}

// retryableErrors are the server errors after which running the whole
// transaction again is safe and may succeed: the server rolled back the
// transaction (for 1205 only the statement; WithRetryTx rolls back the rest)
// or refused it before doing anything.
var retryableErrors = map[uint16]string{
	errLockDeadlock:      "deadlock; Galera certification conflict or brute-force abort; TiDB deadlock (pessimistic mode)",
	errLockWaitTimeout:   "lock wait timeout",
	1020:                 "MariaDB: record changed since last read (snapshot isolation)",
	errClientIdleTimeout: "MySQL: idle connection closed by the server before it read the command",
	9007:                 "TiDB: write conflict (optimistic transaction)",
	8005:                 "TiDB: write conflict, start timestamp stale",
	8002:                 "TiDB: SELECT FOR UPDATE met a write conflict",
	8022:                 "TiDB: transaction commit failed, safe to retry",
	8028:                 "TiDB: schema changed during the transaction",
}

// RetryError is returned by [WithRetryTx] when every attempt failed with a
// retryable error. It matches [ErrRetriesExhausted] and unwraps to the last
// cause, so IsDeadlock(err) still answers for it.
type RetryError struct {
	Attempts int   // attempts made, the first included
	Err      error // the last attempt's error
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("keystore: retries exhausted after %d attempts: %v", e.Attempts, e.Err)
}
func (e *RetryError) Unwrap() []error { return []error{ErrRetriesExhausted, e.Err} }

// AmbiguousCommitError is returned when a transaction's outcome is
// unknown: the connection failed after COMMIT was sent and the outcome
// could not be settled (see [Store.Settle]). It matches
// [ErrAmbiguousCommit] and unwraps to the connection error.
type AmbiguousCommitError struct {
	Err error // the error that left the outcome unknown
	// Receipt settles the outcome later with [Store.Settle]; nil where the
	// transaction had none: WithRetryTx, VerifyKey's credit spend and
	// ratelimit grants, and calls that changed nothing (DeleteKey of a
	// deleted key, EnsureIdentity of an existing owner, CreateRole adding
	// nothing), and every transaction behind a Vitess vtgate, which hides
	// the session's server thread.
	Receipt *Receipt
	// KeyID is the key the transaction would have written (CreateKey,
	// ImportKey, RerollKey), or "".
	KeyID string
}

func (e *AmbiguousCommitError) Error() string {
	msg := "keystore: commit outcome unknown"
	if e.KeyID != "" {
		msg += " (key " + e.KeyID + ")"
	}
	if e.Receipt != nil {
		msg += " (receipt " + e.Receipt.ID + ")"
	}
	return fmt.Sprintf("%s: %v", msg, e.Err)
}
func (e *AmbiguousCommitError) Unwrap() []error { return []error{ErrAmbiguousCommit, e.Err} }

// withKeyID returns err with keyID set on the *AmbiguousCommitError it may
// be.
func withKeyID(err error, keyID string) error {
	var unknown *AmbiguousCommitError
	if errors.As(err, &unknown) {
		unknown.KeyID = keyID
	}
	return err
}

// isUnknownThread reports whether err is KILL's answer for a thread that is
// gone.
func isUnknownThread(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errUnknownThread
}

// serverErrorNumber returns the server's error number of err. Vitess and
// PlanetScale pass MySQL's number through, and where a layer reports it as
// 1105 (unknown error), the message still carries it as "(errno N)".
func serverErrorNumber(err error) (uint16, bool) {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return 0, false
	}
	if me.Number == errUnknown {
		if n, ok := embeddedErrno(me.Message); ok {
			return n, true
		}
	}
	return me.Number, true
}

// embeddedErrno finds "(errno N)" in a Vitess error message.
func embeddedErrno(msg string) (uint16, bool) {
	_, after, found := strings.Cut(msg, "(errno ")
	if !found {
		return 0, false
	}
	digits, _, found := strings.Cut(after, ")")
	n, err := strconv.ParseUint(digits, 10, 16)
	return uint16(n), found && err == nil
}

// IsDuplicateKey reports whether err is, or wraps, a duplicate-key error
// (1062). The server rolled back only that statement.
func IsDuplicateKey(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errDupEntry
}

// isParseError reports whether err says the server does not know a
// statement's syntax, such as INSERT ... RETURNING on MySQL (1064) or
// behind Vitess (1149, or 1105 "syntax error").
func isParseError(err error) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	return me.Number == errParse || me.Number == errSyntax ||
		me.Number == errUnknown && strings.Contains(strings.ToLower(me.Message), "syntax error")
}

// IsDeadlock reports whether err is, or wraps, a deadlock (1213), which is
// also how Galera reports a certification conflict. The server rolled back
// the whole transaction.
func IsDeadlock(err error) bool {
	n, ok := serverErrorNumber(err)
	return ok && n == errLockDeadlock
}

// IsRetryable reports whether a transaction that failed with err can safely
// be run again from BEGIN, on the engines users run: deadlock (1213, which
// is also how Galera reports a certification conflict and TiDB a
// pessimistic deadlock), lock-wait timeout (1205), MariaDB 1020, MySQL's
// idle-connection notice (4031), TiDB's write conflicts and retryable
// commit errors (9007, 8005, 8002, 8022, 8028), Vitess errors carrying any
// of these as "(errno N)", and driver.ErrBadConn (nothing was sent).
//
// A Galera node that is not ready (1047 "WSREP has not yet prepared node")
// is not retried: it stays so for seconds, and refuses ROLLBACK as well as
// COMMIT (WithRetryTx then closes the connection, so that the server rolls
// the transaction back; see runTx).
//
// It is false for an error matching [ErrAmbiguousCommit] and for errors
// that have already been retried ([ErrRetriesExhausted]). Other lost
// connections are retryable only before COMMIT was sent, which
// [WithRetryTx] tracks and IsRetryable cannot; it answers false for them.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, ErrAmbiguousCommit) || errors.Is(err, ErrRetriesExhausted) {
		return false
	}
	if n, ok := serverErrorNumber(err); ok {
		_, retryable := retryableErrors[n]
		return retryable
	}
	return errors.Is(err, driver.ErrBadConn)
}

// isConnectionLost reports whether err says the connection broke, so that
// the server rolled back any open transaction.
func isConnectionLost(err error) bool {
	if n, ok := serverErrorNumber(err); ok {
		return lostConnection(n) || n == errClientIdleTimeout
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne)
}

// retryableAttempt decides whether WithRetryTx runs the transaction again
// after one attempt failed with err. Commit failures that may have applied
// the transaction arrive here as AmbiguousCommitError and are never retried;
// any other lost connection happened before COMMIT was sent, so the server
// rolled the transaction back and it is safe to run again.
func retryableAttempt(err error) bool {
	if errors.Is(err, ErrAmbiguousCommit) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var internal retryableError
	return IsRetryable(err) || isConnectionLost(err) || errors.As(err, &internal)
}

// commitError classifies an error returned by tx.Commit.
func commitError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, driver.ErrBadConn):
		return err // the driver sent nothing
	case errors.Is(err, sql.ErrTxDone), ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return err // database/sql rolled back instead of sending COMMIT
	}
	if n, ok := serverErrorNumber(err); ok && !lostConnection(n) {
		return err // the server answered COMMIT with an error: not applied
	}
	return &AmbiguousCommitError{Err: err}
}

// errIdentityGone: an identity read in this transaction was deleted by
// another before it could be read again. WithRetryTx runs the transaction
// again, which then finds or creates the next identity.
var errIdentityGone = retryableError("keystore: identity was deleted concurrently")

// errConcurrentChange: rows read in this transaction changed under it;
// running the transaction again resolves it.
var errConcurrentChange = retryableError("keystore: concurrent change")

type retryableError string

func (e retryableError) Error() string { return string(e) }
