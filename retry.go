package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jmoiron/sqlx"
)

// TxBeginner starts transactions; *sqlx.DB satisfies it.
type TxBeginner interface {
	BeginTxx(ctx context.Context, opts *sql.TxOptions) (*sqlx.Tx, error)
}

var _ TxBeginner = (*sqlx.DB)(nil)

// Retry defaults. A hot burst of 64 goroutines on one new identity finishes
// without a single retry on one server (the identity protocol does not
// deadlock); retries are for deadlocks between unrelated writers, lock-wait
// timeouts and connections lost before COMMIT. Ten attempts with backoff
// capped at a quarter second bound a failing call to about 1.5 s of sleeping.
const (
	DefaultMaxAttempts = 10
	DefaultBackoffBase = 5 * time.Millisecond
	DefaultBackoffMax  = 250 * time.Millisecond
)

// RetryOption configures [WithRetryTx].
type RetryOption func(*retryConfig)

type retryConfig struct {
	maxAttempts int
	base, max   time.Duration
	onRetry     []func(attempt int, err error)
	txOptions   *sql.TxOptions
}

// MaxAttempts sets how many times the transaction runs at most, counting the
// first. Values below 1 mean 1 (no retry). Default [DefaultMaxAttempts].
func MaxAttempts(n int) RetryOption {
	return func(c *retryConfig) { c.maxAttempts = max(n, 1) }
}

// Backoff sets the sleep before retry n (n = 1, 2, ...) to a random duration
// in [0, min(max, base·2^(n-1))) ("full jitter"). Defaults
// [DefaultBackoffBase] and [DefaultBackoffMax]. A base of 0 disables sleeping.
func Backoff(base, max time.Duration) RetryOption {
	return func(c *retryConfig) { c.base, c.max = base, max }
}

// OnRetry registers f, called after attempt number attempt failed with the
// retryable err and before the backoff sleep. Several OnRetry options all run,
// in order. f must be quick and must not block.
func OnRetry(f func(attempt int, err error)) RetryOption {
	return func(c *retryConfig) { c.onRetry = append(c.onRetry, f) }
}

// TxOptions sets the isolation level and read-only flag of every attempt's
// transaction. The default (nil) is the server's default, REPEATABLE READ for
// InnoDB. A level other than the default costs one statement per attempt.
func TxOptions(opts *sql.TxOptions) RetryOption {
	return func(c *retryConfig) { c.txOptions = opts }
}

// WithRetryTx runs fn in a transaction on db and commits it, running the
// whole transaction again (a fresh BEGIN..COMMIT) when it fails with an error
// for which [IsRetryable] is true (deadlock 1213, also reported by Galera at
// COMMIT; lock-wait timeout 1205; MariaDB's 1020; TiDB's write conflicts;
// see IsRetryable for the whole list), or with a connection lost before
// COMMIT was sent. Between attempts it rolls back and then sleeps (see
// [Backoff]); ctx cancels the sleep and the statements.
//
// fn may run several times, so it must have no effects outside tx (no
// channel sends, no external calls, no appending to outer slices that is not
// undone), and it must return database errors unchanged or wrapped with %w,
// or they will not be recognised as retryable. A panic in fn rolls back and
// re-panics.
//
// Errors: fn's own error if it is not retryable; an error matching
// [ErrRetriesExhausted] (a *RetryError wrapping the last cause) when every
// attempt failed; an error matching [ErrAmbiguousCommit] when the connection
// failed after COMMIT was sent, which is never retried because the
// transaction may have been applied; ctx.Err() (wrapped) when ctx ends.
//
// COMMIT takes no context (database/sql), so a COMMIT whose reply never
// comes is bounded only by the DSN's readTimeout and writeTimeout; set them.
func WithRetryTx[T any](ctx context.Context, db TxBeginner, fn func(ctx context.Context, tx *sqlx.Tx) (T, error), opts ...RetryOption) (T, error) {
	cfg := newRetryConfig(opts)
	return retry(ctx, &cfg, func() (T, error) { return runTx(ctx, db, cfg.txOptions, fn, nil) })
}

// retry runs attempt, a whole transaction, until it succeeds, fails with an
// error that is not retryable, or has run cfg.maxAttempts times, sleeping
// the backoff between attempts; the errors are those of [WithRetryTx].
func retry[T any](ctx context.Context, cfg *retryConfig, attempt func() (T, error)) (T, error) {
	var zero T
	for n := 1; ; n++ {
		v, err := attempt()
		if err == nil {
			return v, nil
		}
		if !retryableAttempt(err) {
			return zero, err
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return zero, fmt.Errorf("keystore: %w (after: %v)", ctxErr, err)
		}
		if n >= cfg.maxAttempts {
			return zero, &RetryError{Attempts: n, Err: err}
		}
		if err := cfg.retried(ctx, n, err); err != nil {
			return zero, err
		}
	}
}

// runTx is one attempt: BEGIN, fn, COMMIT, with rollback on any failure.
//
// When the database can hand out a dedicated connection (*sqlx.DB can), the
// attempt holds one, so that a connection whose transaction may still be
// open is closed instead of going back to the pool: one whose ROLLBACK
// failed, or whose COMMIT failed with an error that does not say the
// server rolled back (a Galera node that is not ready refuses both with
// 1047). Closing it makes the server roll the transaction back; back in the
// pool, the next BEGIN on it would have committed it.
//
// onConn, when not nil, is called with the dedicated connection before
// BEGIN is sent on it.
func runTx[T any](ctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(ctx context.Context, tx *sqlx.Tx) (T, error),
	onConn func(context.Context, *sqlx.Conn) error) (v T, err error) {
	conn, tx, err := begin(ctx, db, opts, onConn)
	if err != nil {
		return v, err
	}
	if conn != nil {
		defer conn.Close()
	}
	rollback := func() {
		if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
			discard(conn)
		}
	}
	defer func() {
		if p := recover(); p != nil {
			rollback()
			panic(p)
		}
	}()
	v, err = fn(ctx, tx)
	if err != nil {
		rollback()
		return v, contextEnded(ctx, err)
	}
	if err := tx.Commit(); err != nil {
		if !IsDeadlock(err) { // a deadlock or certification failure rolled it back
			discard(conn)
		}
		return v, contextEnded(ctx, commitError(ctx, err))
	}
	return v, nil
}

// contextEnded returns err as ctx's error when it is sql.ErrTxDone after
// ctx ended: database/sql rolled the transaction back when the context
// ended (a statement or COMMIT racing that rollback gets ErrTxDone), so
// nothing was written, and the caller's own context says why.
func contextEnded(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("keystore: %w (the transaction was rolled back as the context ended)", ctxErr)
	}
	return err
}

// begin starts a transaction, on a connection of its own when db can give
// one (conn is nil otherwise), passed to onConn (if not nil) first.
func begin(ctx context.Context, db TxBeginner, opts *sql.TxOptions, onConn func(context.Context, *sqlx.Conn) error) (*sqlx.Conn, *sqlx.Tx, error) {
	pool, ok := db.(interface {
		Connx(ctx context.Context) (*sqlx.Conn, error)
	})
	if !ok {
		tx, err := db.BeginTxx(ctx, opts)
		return nil, tx, err
	}
	conn, err := pool.Connx(ctx)
	if err != nil {
		return nil, nil, err
	}
	if onConn != nil {
		if err := onConn(ctx, conn); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	tx, err := conn.BeginTxx(ctx, opts)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, tx, nil
}

// discard closes conn rather than returning it to the pool.
func discard(conn *sqlx.Conn) {
	if conn != nil {
		serverThreads.forget(conn)
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

func newRetryConfig(opts []RetryOption) retryConfig {
	cfg := retryConfig{maxAttempts: DefaultMaxAttempts, base: DefaultBackoffBase, max: DefaultBackoffMax}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// retried reports a retry of attempt, which failed with err, to the OnRetry
// callbacks, then sleeps the backoff.
func (c *retryConfig) retried(ctx context.Context, attempt int, err error) error {
	for _, f := range c.onRetry {
		f(attempt, err)
	}
	if sleepErr := sleep(ctx, c.backoff(attempt)); sleepErr != nil {
		return fmt.Errorf("keystore: %w (during backoff after: %v)", sleepErr, err)
	}
	return nil
}

func (c *retryConfig) backoff(attempt int) time.Duration {
	if c.base <= 0 || c.max <= 0 {
		return 0
	}
	ceiling := c.max
	if shift := attempt - 1; shift < 32 && c.base<<shift > 0 && c.base<<shift < c.max {
		ceiling = c.base << shift
	}
	return rand.N(ceiling)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
