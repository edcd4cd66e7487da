package keystore

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
)

// Reads and the replica.
//
// With [WithReplica], these reads go to the replica: GetKey, FindIdentity,
// the SELECT of VerifyKey, ListKeys, ListIdentities and ListAuditEvents.
// Everything else never does: every write, and every read inside a write
// (identities, permissions and roles are found or created on the primary),
// and every credit spend of VerifyKey, which is one conditional UPDATE on
// the primary that checks the key is still enabled, unexpired and not
// deleted there.
//
// A replica read is as stale as the replica's lag. During that window a
// read may show a key as it was: still enabled, unexpired or undeleted,
// with its old name, meta, permissions or owner; VerifyKey may then answer
// CodeValid for a key without credits that was just disabled, deleted or
// given credits. A key with credits cannot be spent that way: its UPDATE on
// the primary matches nothing and VerifyKey answers from a primary read.
// The other way round never happens: VerifyKey asks the primary before
// answering anything but valid (disabled, expired, too few credits), so a
// key just enabled, extended or given credits verifies at once. Callers
// that need the primary's answer for every read ask for it with
// [ContextWithPrimaryRead].
//
// A replica miss goes to the primary: GetKey, FindIdentity and VerifyKey
// try the primary before answering not found, so a key can be verified the
// moment CreateKey returns. Listings do not (an empty or short page is not
// a miss).
//
// A replica that fails (down, refusing, erroring) or does not answer within
// the timeout ([WithReplicaTimeout]) costs that one read the time it took;
// the primary then answers, and reads skip the replica for a second before
// trying it again.

// replica is the Store's read replica. A nil *replica is none.
type replica struct {
	db      *sqlx.DB
	timeout time.Duration
	// skipUntil is when reads try the replica again after it failed, in
	// Unix nanoseconds; 0 when it has not failed.
	skipUntil atomic.Int64
	session   sessionCheck
}

// Defaults of the replica.
const (
	defaultReplicaTimeout = 250 * time.Millisecond
	replicaPause          = time.Second
)

// WithReplica sends the reads that may be stale by the replication lag to
// db, a read replica of the primary (see the comment at the top of
// replica.go for which reads those are and what they may miss). A SELECT
// privilege is all db needs. Replica errors never fail a read the primary
// can serve.
func WithReplica(db *sqlx.DB) Option {
	return func(s *Store) {
		if s.replica == nil {
			s.replica = &replica{timeout: defaultReplicaTimeout}
		}
		s.replica.db = db // nil: no replica
	}
}

// WithReplicaTimeout bounds each replica read; past it the primary answers.
// The default is 250 ms. It only matters with [WithReplica].
func WithReplicaTimeout(d time.Duration) Option {
	return func(s *Store) {
		if s.replica == nil {
			s.replica = &replica{}
		}
		s.replica.timeout = d
	}
}

type primaryReadKey struct{}

// ContextWithPrimaryRead returns a context whose reads go to the primary
// even when the Store has a replica: for a caller that must not see a
// stale key (say, right after disabling it elsewhere).
func ContextWithPrimaryRead(ctx context.Context) context.Context {
	return context.WithValue(ctx, primaryReadKey{}, true)
}

// read runs f on the replica when the Store has one that is not being
// skipped and ctx does not ask for the primary; and on the primary when
// there is no replica, or f failed on it, timed out, or found nothing
// (sql.ErrNoRows or ErrNotFound: the row may be too new for the replica).
// f must start afresh when called a second time.
func (s *Store) read(ctx context.Context, f func(ctx context.Context, db *sqlx.DB) error) error {
	r := s.replica
	if r == nil || r.db == nil || ctx.Value(primaryReadKey{}) != nil || time.Now().UnixNano() < r.skipUntil.Load() {
		return s.readPrimary(ctx, f)
	}
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	err := r.session.verify(rctx, r.db)
	if err == nil {
		err = f(rctx, r.db)
	}
	cancel()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows), errors.Is(err, ErrNotFound):
	case ctx.Err() != nil:
		return err // the caller's own deadline or cancellation
	default:
		r.skipUntil.Store(time.Now().Add(replicaPause).UnixNano())
		s.log.Warn("keystore: replica read failed; reading from the primary", "err", err, "skip", replicaPause)
	}
	return s.readPrimary(ctx, f)
}

// readPrimary runs f on the primary.
func (s *Store) readPrimary(ctx context.Context, f func(ctx context.Context, db *sqlx.DB) error) error {
	if err := s.session.verify(ctx, s.db); err != nil {
		return err
	}
	return f(ctx, s.db)
}
