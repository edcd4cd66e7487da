package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/go-sql-driver/mysql"
)

func TestClassification(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("layer two: %w", fmt.Errorf("layer one: %w", err)) }
	deadlock := &mysql.MySQLError{Number: 1213, SQLState: [5]byte{'4', '0', '0', '0', '1'}, Message: "Deadlock found"}
	dup := &mysql.MySQLError{Number: 1062, Message: "Duplicate entry"}
	cases := []struct {
		name                         string
		err                          error
		dup, deadlock, retry, inLoop bool
	}{
		{"deadlock", deadlock, false, true, true, true},
		{"wrapped deadlock", wrap(deadlock), false, true, true, true},
		{"lock wait timeout", wrap(&mysql.MySQLError{Number: 1205}), false, false, true, true},
		{"MariaDB 1020", &mysql.MySQLError{Number: 1020}, false, false, true, true},
		{"duplicate key", wrap(dup), true, false, false, false},
		{"syntax error", &mysql.MySQLError{Number: 1064}, false, false, false, false},
		{"bad conn", wrap(driver.ErrBadConn), false, false, true, true},
		{"invalid conn before commit", wrap(mysql.ErrInvalidConn), false, false, false, true},
		{"EOF before commit", io.ErrUnexpectedEOF, false, false, false, true},
		{"server shutdown", &mysql.MySQLError{Number: 1053}, false, false, false, true},
		{"ambiguous commit", &AmbiguousCommitError{Err: mysql.ErrInvalidConn}, false, false, false, false},
		{"exhausted deadlock", &RetryError{Attempts: 3, Err: deadlock}, false, true, false, false},
		{"canceled", wrap(context.Canceled), false, false, false, false},
		{"internal retryable", errIdentityGone, false, false, false, true},
		{"nil", nil, false, false, false, false},
	}
	for _, c := range cases {
		if got := IsDuplicateKey(c.err); got != c.dup {
			t.Errorf("%s: IsDuplicateKey = %v", c.name, got)
		}
		if got := IsDeadlock(c.err); got != c.deadlock {
			t.Errorf("%s: IsDeadlock = %v", c.name, got)
		}
		if got := IsRetryable(c.err); got != c.retry {
			t.Errorf("%s: IsRetryable = %v", c.name, got)
		}
		if c.err != nil {
			if got := retryableAttempt(c.err); got != c.inLoop {
				t.Errorf("%s: retried by WithRetryTx = %v", c.name, got)
			}
		}
	}
}

func TestCommitErrorClassification(t *testing.T) {
	ctx := context.Background()
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	cases := []struct {
		name      string
		ctx       context.Context
		err       error
		ambiguous bool
	}{
		{"connection lost after COMMIT was sent", ctx, mysql.ErrInvalidConn, true},
		{"read error after COMMIT was sent", ctx, io.ErrUnexpectedEOF, true},
		{"server shut down while committing", ctx, &mysql.MySQLError{Number: 1053}, true},
		{"Vitess lost its MySQL connection during COMMIT", ctx, vitess(1105, "Lost connection to MySQL server during query (errno 2013) (sqlstate HY000)"), true},
		{"Vitess found its MySQL connection gone at COMMIT", ctx, vitess(1105, "MySQL server has gone away (errno 2006) (sqlstate HY000)"), true},
		{"Galera certification failure at COMMIT", ctx, &mysql.MySQLError{Number: 1213}, false},
		{"nothing sent", ctx, driver.ErrBadConn, false},
		{"context ended before COMMIT", canceled, context.Canceled, false},
		{"transaction already rolled back", ctx, sql.ErrTxDone, false},
	}
	for _, c := range cases {
		err := commitError(c.ctx, c.err)
		if got := errors.Is(err, ErrAmbiguousCommit); got != c.ambiguous {
			t.Errorf("%s: ambiguous = %v, want %v", c.name, got, c.ambiguous)
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: %v does not wrap the cause", c.name, err)
		}
		if c.ambiguous && retryableAttempt(err) {
			t.Errorf("%s: an ambiguous commit must never be retried", c.name)
		}
	}
	// Before COMMIT, the same lost connection rolled the transaction back:
	// WithRetryTx runs it again.
	if !retryableAttempt(vitess(1105, "Lost connection to MySQL server during query (errno 2013) (sqlstate HY000)")) {
		t.Error("a connection Vitess lost mid-transaction must be retried")
	}
	if IsDeadlock(commitError(ctx, &mysql.MySQLError{Number: 1213})) != true || !retryableAttempt(commitError(ctx, &mysql.MySQLError{Number: 1213})) {
		t.Error("a deadlock reported at COMMIT must be retried")
	}
}

func TestBackoffIsBoundedFullJitter(t *testing.T) {
	c := retryConfig{base: 10, max: 1000}
	for attempt := 1; attempt < 100; attempt++ {
		ceiling := min(int64(10)<<min(attempt-1, 40), 1000)
		for range 50 {
			if d := c.backoff(attempt); d < 0 || int64(d) >= ceiling {
				t.Fatalf("attempt %d: backoff %d outside [0, %d)", attempt, d, ceiling)
			}
		}
	}
	if d := (&retryConfig{}).backoff(3); d != 0 {
		t.Fatalf("zero base: backoff %v, want 0", d)
	}
}

// Errors as the engines send them (number, SQLSTATE and message as found in
// their documentation and source), decoded by the driver into MySQLError.
func TestEngineErrorClassification(t *testing.T) {
	state := func(s string) (b [5]byte) { copy(b[:], s); return b }
	cases := []struct {
		engine        string
		err           *mysql.MySQLError
		retry, lockDL bool
		dup           bool
	}{
		{"MariaDB deadlock", &mysql.MySQLError{Number: 1213, SQLState: state("40001"), Message: "Deadlock found when trying to get lock; try restarting transaction"}, true, true, false},
		{"MariaDB lock wait timeout", &mysql.MySQLError{Number: 1205, SQLState: state("HY000"), Message: "Lock wait timeout exceeded; try restarting transaction"}, true, false, false},
		{"MariaDB snapshot isolation", &mysql.MySQLError{Number: 1020, SQLState: state("HY000"), Message: "Record has changed since last read in table 'keystore_keys'"}, true, false, false},
		{"MySQL idle disconnect", &mysql.MySQLError{Number: 4031, SQLState: state("HY000"), Message: "The client was disconnected by the server because of inactivity. See wait_timeout and interactive_timeout for configuring this behavior."}, true, false, false},
		{"Galera conflict", &mysql.MySQLError{Number: 1213, SQLState: state("40001"), Message: "WSREP detected deadlock/conflict and aborted the transaction. Try restarting the transaction"}, true, true, false},
		{"Galera node not ready (may refuse ROLLBACK too)", &mysql.MySQLError{Number: 1047, SQLState: state("08S01"), Message: "WSREP has not yet prepared node for application use"}, false, false, false},
		{"unknown command, not Galera", &mysql.MySQLError{Number: 1047, SQLState: state("08S01"), Message: "Unknown command"}, false, false, false},
		{"TiDB write conflict", &mysql.MySQLError{Number: 9007, SQLState: state("HY000"), Message: "Write conflict, txnStartTS=421530468823416833, conflictStartTS=421530468823416834, conflictCommitTS=421530468836524033, key={tableID=55, handle=1} primary={tableID=55, handle=1} [try again later]"}, true, false, false},
		{"TiDB stale write conflict", &mysql.MySQLError{Number: 8005, SQLState: state("HY000"), Message: "Write Conflict, txnStartTS is stale"}, true, false, false},
		{"TiDB select for update", &mysql.MySQLError{Number: 8002, SQLState: state("HY000"), Message: "[tikv:8002]can not retry select for update statement"}, true, false, false},
		{"TiDB retryable commit", &mysql.MySQLError{Number: 8022, SQLState: state("HY000"), Message: "Error: KV error safe to retry  [try again later]"}, true, false, false},
		{"TiDB schema changed", &mysql.MySQLError{Number: 8028, SQLState: state("HY000"), Message: "Information schema is changed during the execution of the statement(for example, table definition may be updated by other DDL ran in parallel). If you see this error often, try increasing `tidb_max_delta_schema_count`. [try again later]"}, true, false, false},
		{"TiDB pessimistic deadlock", &mysql.MySQLError{Number: 1213, SQLState: state("40001"), Message: "Deadlock found when trying to get lock; try restarting transaction"}, true, true, false},
		{"TiDB transaction too large", &mysql.MySQLError{Number: 8004, SQLState: state("HY000"), Message: "Transaction is too large, size: 104857600"}, false, false, false},
		{"Vitess deadlock as 1105", vitess(1105, "Deadlock found when trying to get lock; try restarting transaction (errno 1213) (sqlstate 40001)"), true, true, false},
		{"Vitess deadlock passed through", vitess(1213, "Deadlock found when trying to get lock; try restarting transaction (errno 1213) (sqlstate 40001)"), true, true, false},
		{"Vitess duplicate as 1105", vitess(1105, "Duplicate entry 'ws-u1-1' for key 'keystore_identities.keystore_identities_live' (errno 1062) (sqlstate 23000)"), false, false, true},
		{"Vitess lock wait timeout as 1105", vitess(1105, "Lock wait timeout exceeded; try restarting transaction (errno 1205) (sqlstate HY000)"), true, false, false},
		{"Vitess unknown error without errno", vitess(1105, "vttablet: connection refused"), false, false, false},
		{"Vitess malformed errno", vitess(1105, "something (errno 12x3) (sqlstate 40001)"), false, false, false},
	}
	for _, c := range cases {
		err := fmt.Errorf("keystore: insert key: %w", c.err)
		if got := IsRetryable(err); got != c.retry {
			t.Errorf("%s: IsRetryable = %v, want %v", c.engine, got, c.retry)
		}
		if got := retryableAttempt(err); got != c.retry {
			t.Errorf("%s: retried by WithRetryTx = %v, want %v", c.engine, got, c.retry)
		}
		if got := IsDeadlock(err); got != c.lockDL {
			t.Errorf("%s: IsDeadlock = %v, want %v", c.engine, got, c.lockDL)
		}
		if got := IsDuplicateKey(err); got != c.dup {
			t.Errorf("%s: IsDuplicateKey = %v, want %v", c.engine, got, c.dup)
		}
		// Answered to COMMIT, each is the server's verdict: not applied.
		if errors.Is(commitError(context.Background(), c.err), ErrAmbiguousCommit) {
			t.Errorf("%s at COMMIT: classified as ambiguous", c.engine)
		}
	}
}

// Syntax a server does not know (INSERT ... RETURNING on MySQL, or behind
// Vitess) is recognised, so that a Store falls back instead of failing.
func TestParseErrorRecognised(t *testing.T) {
	cases := []struct {
		err  *mysql.MySQLError
		want bool
	}{
		{&mysql.MySQLError{Number: 1064, Message: "You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near 'RETURNING identity_id' at line 3"}, true},
		{&mysql.MySQLError{Number: 1149, Message: "syntax error at position 412 near 'RETURNING'"}, true},
		{&mysql.MySQLError{Number: 1105, Message: "syntax error at position 412 near 'RETURNING'"}, true},
		{&mysql.MySQLError{Number: 1105, Message: "vttablet: connection refused"}, false},
		{&mysql.MySQLError{Number: 1062, Message: "Duplicate entry"}, false},
	}
	for _, c := range cases {
		if got := isParseError(fmt.Errorf("keystore: insert key: %w", c.err)); got != c.want {
			t.Errorf("%d %q: isParseError = %v, want %v", c.err.Number, c.err.Message, got, c.want)
		}
	}
}

// vitess is an error as vtgate passes on one from vttablet: desc carries
// MySQL's message and "(errno N)".
func vitess(number uint16, desc string) *mysql.MySQLError {
	return &mysql.MySQLError{Number: number, SQLState: [5]byte{'H', 'Y', '0', '0', '0'}, Message: "target: commerce.0.primary: vttablet: rpc error: code = Aborted desc = " +
		desc + " (CallerID: app): Sql: \"insert into keystore_identities(id) values (:vtg1)\", BindVars: {vtg1: \"type:VARCHAR\"}"}
}
