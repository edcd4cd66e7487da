package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
)

// Store persists keys and the identities that own them. It is safe for
// concurrent use by any number of goroutines and processes: every write runs
// in one [WithRetryTx] transaction (VerifyKey's credit spend is a single
// conditional UPDATE), so concurrent callers all succeed and nothing is
// half-written.
type Store struct {
	db    *sqlx.DB
	now   func() time.Time
	log   *slog.Logger
	retry []RetryOption
	// retryConfig is retry applied once, for writes that are one statement
	// (VerifyKey's credit spends, execOneTrip).
	retryConfig retryConfig
	noAudit     bool
	hints       identityHints
	replica     *replica // nil: none
	session     sessionCheck
	leases      tokenLeases // ratelimit tokens granted to this Store
	// settleTimeout bounds the settling of a lost commit (settle.go).
	settleTimeout time.Duration
	// cache is VerifyKey's, nil without WithVerifyCache (cache.go).
	cache          *verifyCache
	cacheKeys      int
	cacheStaleness time.Duration
	prepared       preparedStatements
	// noReturning is set once the server rejected INSERT ... RETURNING,
	// noOneTrip once it rejected an anonymous block (see execOneTrip).
	noReturning, noOneTrip atomic.Bool
}

// Option configures a Store.
type Option func(*Store)

// WithRetryOptions sets the retry policy of the Store's transactions; see
// [MaxAttempts], [Backoff] and [OnRetry]. The defaults are those of
// [WithRetryTx].
func WithRetryOptions(opts ...RetryOption) Option {
	return func(s *Store) { s.retry = append(s.retry, opts...) }
}

// WithClock sets the clock used for timestamps, expiry checks and refills.
// The default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// WithLogger sets the logger for retries and other events. The default
// discards everything. Key plaintext is never logged.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) { s.log = l }
}

// WithoutAudit turns the audit trail off: mutations write no audit event,
// which saves the event's INSERT. So that a commit whose reply was lost can
// still be settled (settle.go), CreateKey and ImportKey use the key they
// create as the receipt, and every other mutation writes a small receipt
// row (keystore_receipts) instead of its event: the same count of
// statements. For services that keep their own trail.
func WithoutAudit() Option {
	return func(s *Store) { s.noAudit = true }
}

// New returns a Store on db, the primary (read-write) server. It does no I/O;
// call [Store.Migrate] once to create the schema. The Store's first call on
// each pool checks that its sessions autocommit, and every call fails with
// an error matching ErrUnsupportedSetting, writing nothing, while they do
// not. Make one Store per pool
// and keep it for the pool's life: it remembers owners it has seen and
// keeps VerifyKey's lookup prepared on the pool (and on the replica's) until
// [Store.Close].
//
// The DSN of db should set interpolateParams=true (one round trip per
// statement instead of three). parseTime may be on or off.
func New(db *sqlx.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("keystore: New: db is nil")
	}
	if name := db.DriverName(); name != "mysql" {
		return nil, fmt.Errorf("keystore: New: driver %q is not supported, use github.com/go-sql-driver/mysql (\"mysql\")", name)
	}
	s := &Store{db: db, now: time.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil)), settleTimeout: DefaultSettleTimeout}
	for _, o := range opts {
		o(s)
	}
	if s.now == nil || s.log == nil {
		return nil, errors.New("keystore: New: WithClock and WithLogger need a non-nil argument")
	}
	if s.settleTimeout <= 0 {
		return nil, errors.New("keystore: New: WithSettleTimeout needs a positive duration")
	}
	if r := s.replica; r != nil && r.timeout <= 0 {
		return nil, errors.New("keystore: New: WithReplicaTimeout needs a positive duration")
	}
	if s.cacheKeys != 0 || s.cacheStaleness != 0 {
		if s.cacheKeys <= 0 || s.cacheStaleness <= 0 {
			return nil, errors.New("keystore: New: WithVerifyCache needs a positive maxKeys and maxStaleness")
		}
		s.cache = newVerifyCache(db, s.log, s.cacheKeys, s.cacheStaleness)
	}
	logRetry := OnRetry(func(attempt int, err error) {
		s.log.Debug("keystore: retrying transaction", "attempt", attempt, "err", err)
	})
	s.retry = append([]RetryOption{logRetry}, s.retry...)
	s.retryConfig = newRetryConfig(s.retry)
	return s, nil
}

// tx runs fn in a retried transaction with the Store's retry policy and
// then extra. Each attempt carries a pending receipt in fn's ctx for the
// trail fn writes, the Store's cache forgets what the trail recorded as
// changed at once when tx returns (changes.go); a commit whose reply was lost is settled with it
// (settle.go); an attempt whose connection broke before COMMIT has its
// server thread ended before the next attempt.
func tx[T any](ctx context.Context, s *Store, fn func(ctx context.Context, tx *sqlx.Tx) (T, error), extra ...RetryOption) (T, error) {
	if err := s.session.verify(ctx, s.db); err != nil {
		var zero T
		return zero, err
	}
	cfg := newRetryConfig(append(s.retry[:len(s.retry):len(s.retry)], extra...))
	var p *pending // the last attempt's
	defer func() { s.changedHere(p) }()
	return retry(ctx, &cfg, func() (T, error) {
		p = s.newPending()
		v, err := runTx(withPending(ctx, p), s.db, cfg.txOptions, fn, p.sentOn)
		if err != nil && !errors.Is(err, ErrAmbiguousCommit) && isConnectionLost(err) && ctx.Err() == nil {
			s.release(ctx, p)
		}
		return v, s.settled(ctx, p, err)
	})
}

// readCommitted runs a transaction at READ COMMITTED, for transactions that
// read back, after get-or-creates, rows that racing transactions committed
// after this one's first read (a REPEATABLE READ snapshot would hide them).
var readCommitted = TxOptions(&sql.TxOptions{Isolation: sql.LevelReadCommitted})

// Close releases what the Store keeps on the server: the statements it
// prepared on the pools (one per pool and connection). It does not close
// the pools, which belong to the caller. A Store stays usable after Close,
// preparing again when it needs to; Close is for a Store that is done.
func (s *Store) Close() error {
	return s.prepared.close()
}

// clock returns the Store's current time in UTC, at the microsecond
// precision the schema stores.
func (s *Store) clock() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// exec runs one statement of a transaction, naming it in its error.
func exec(ctx context.Context, tx *sqlx.Tx, what, query string, args ...any) error {
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("keystore: %s: %w", what, err)
	}
	return nil
}
