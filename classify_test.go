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
