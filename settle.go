package keystore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// Settling a commit whose reply was lost.
//
// Every mutation that changes something writes, in its own transaction, a
// row under an id the Store chose before sending it: its first audit
// event; under WithoutAudit, the key that CreateKey or ImportKey creates,
// or a row of keystore_receipts. That row is its receipt. When
// the reply to the COMMIT is lost (a connection reset, ctx ending while the
// one-round-trip block runs), the Store settles the outcome before it
// returns:
//
//  1. On a new connection to the same server, it KILLs the server thread
//     that ran the transaction, unless the server restarted since (then
//     nothing of it is still running, and its id may be another's), and
//     waits until the thread is gone from the process list. A thread's
//     transaction ends, committed or rolled back, before the thread leaves
//     the list, and a killed thread runs nothing more of what its client
//     sent.
//  2. It reads the receipt. Present: the transaction committed, and the
//     call returns its result. Absent: it never will, so the call runs it
//     again (or, when ctx has ended, returns ctx's error).
//
// A plain read without step 1 would not be final: the transaction may still
// be running, or (on a half-open connection) be held open for hours. The
// thread id, with the server and the start of its run, is asked of the
// server once per pooled connection (one SELECT when a Store first writes
// on it) and kept with the connection.
//
// Settling is bounded by the Store's settle timeout, not by the call's
// ctx. When the server cannot be reached for all of it, the call returns
// an *AmbiguousCommitError carrying the Receipt, which [Store.Settle]
// settles later.

// DefaultSettleTimeout is how long a Store tries to settle a lost commit
// before it returns ErrAmbiguousCommit; see [WithSettleTimeout].
const DefaultSettleTimeout = 5 * time.Second

// WithSettleTimeout sets how long a call tries to settle the outcome of a
// commit whose reply was lost (reaching the server again, waiting for the
// old connection's thread to end) before it returns an error matching
// ErrAmbiguousCommit. The time runs even when the call's ctx has ended:
// that is what lets such a call return success or ctx's error with
// nothing written, instead of "unknown". Default [DefaultSettleTimeout].
func WithSettleTimeout(d time.Duration) Option {
	return func(s *Store) { s.settleTimeout = d }
}

// Receipt identifies a mutation's transaction, so that whether it committed
// can be found out after the reply to its COMMIT was lost. It is plain
// data: keep it (say, as JSON) and settle it with [Store.Settle].
type Receipt struct {
	// ID is the id of the row the transaction wrote as its receipt: its
	// first audit event ("evt_..."); on a Store made WithoutAudit, the key
	// it created ("key_...") or else its row of keystore_receipts
	// ("rcp_...").
	ID string
	// Server is the server that ran the transaction (@@hostname,
	// @@server_id and @@datadir, which a restart keeps), Thread its
	// connection id there (CONNECTION_ID()), and Started the start of
	// that run of the server, in Unix seconds by its clock: thread ids are
	// reused after a restart.
	Server  string
	Thread  uint64
	Started int64
}

// Settle finds out whether the transaction of receipt r committed, from
// the server that ran it: it ends the transaction's connection if it is
// still open (KILL), then reads the receipt's row. committed is final:
// true, the mutation is there in full; false, nothing of it was written
// and nothing of it will be, so running the call again is safe.
//
// Errors: ErrInvalidInput for a receipt without ID or Server;
// ErrAmbiguousCommit (wrapping the last cause) when the server could not be
// reached within ctx and the Store's settle timeout. Settle needs no
// privilege when the Store connects as the user that ran the transaction:
// a user may KILL, and see in the process list, its own connections.
func (s *Store) Settle(ctx context.Context, r Receipt) (committed bool, err error) {
	if _, ok := receiptTable(r.ID); !ok {
		return false, invalid("ID", "is not a receipt id (evt_..., rcp_... or key_...)")
	}
	if r.Server == "" || r.Thread == 0 || r.Started <= 0 {
		return false, invalid("Server", "Server, Thread and Started must all be set, from the connection that sent the transaction")
	}
	ctx, cancel := context.WithTimeout(ctx, s.settleTimeout)
	defer cancel()
	committed, err = s.settle(ctx, r)
	if err != nil {
		return false, &AmbiguousCommitError{Err: err, Receipt: &r}
	}
	return committed, nil
}

// PruneReceipts deletes the receipts that a Store made WithoutAudit wrote
// before t, in batches of 10,000 (a Store with an audit trail uses its
// audit events, which it never deletes). A receipt deleted can no longer
// be settled: keep those of any *AmbiguousCommitError you may still
// settle. It returns how many it deleted; safe to run while Stores write.
func (s *Store) PruneReceipts(ctx context.Context, t time.Time) (int64, error) {
	// Receipt ids are "rcp_" and a UUIDv7 in hex, which begins with its
	// Unix time in milliseconds (48 bits): ids below this one are older.
	cutoff := fmt.Sprintf("rcp_%012x", t.UnixMilli())
	var deleted int64
	for {
		res, err := s.db.ExecContext(ctx, `DELETE FROM keystore_receipts WHERE id < ? ORDER BY id LIMIT 10000`, cutoff)
		if err != nil {
			return deleted, fmt.Errorf("keystore: prune receipts: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return deleted, fmt.Errorf("keystore: prune receipts: %w", err)
		}
		if deleted += n; n < 10000 {
			return deleted, nil
		}
	}
}

// settled returns err, the error of an attempt that wrote receipt p, or,
// when err left the attempt's outcome unknown, what settling found: nil
// when the attempt committed; when it did not, ctx's error if ctx has
// ended, or else an error that retry runs the attempt again for; err
// carrying the receipt when the settle timeout passed first.
func (s *Store) settled(ctx context.Context, p *pending, err error) error {
	var unknown *AmbiguousCommitError
	if !errors.As(err, &unknown) || p.receipt.ID == "" || p.receipt.Server == "" {
		return err
	}
	settleCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.settleTimeout)
	defer cancel()
	committed, settleErr := s.settle(settleCtx, p.receipt)
	if settleErr != nil {
		r := p.receipt
		s.log.Warn("keystore: could not settle a lost commit", "receipt", r.ID, "err", settleErr)
		return &AmbiguousCommitError{Err: unknown.Err, Receipt: &r}
	}
	s.log.Info("keystore: settled a lost commit", "receipt", p.receipt.ID, "committed", committed, "err", unknown.Err)
	switch {
	case committed:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("keystore: %w (the transaction did not commit)", ctx.Err())
	}
	return fmt.Errorf("%w: %w", errNotCommitted, unknown.Err)
}

// errNotCommitted: a commit whose reply was lost was settled as not
// committed; retry runs the transaction again.
var errNotCommitted = retryableError("keystore: the transaction did not commit")

// settle finds out, on r's server, whether r's transaction committed,
// trying until ctx ends.
func (s *Store) settle(ctx context.Context, r Receipt) (committed bool, err error) {
	err = s.onServerOf(ctx, r, func(conn *sqlx.Conn) error {
		table, _ := receiptTable(r.ID)
		return conn.GetContext(ctx, &committed, `SELECT EXISTS (SELECT 1 FROM `+table+` WHERE id = ?)`, r.ID)
	})
	return committed, err
}

// release ends the server thread of an attempt whose connection broke
// before its COMMIT was sent, so that the next attempt does not wait for
// the locks its transaction holds: the server rolls that transaction back
// when it notices the connection is gone, which for a half-open one may
// be hours. It tries for the settle timeout, and gives up quietly: the
// next attempt then meets what it meets.
func (s *Store) release(ctx context.Context, p *pending) {
	if p.receipt.Server == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.settleTimeout)
	defer cancel()
	if err := s.onServerOf(ctx, p.receipt, func(*sqlx.Conn) error { return nil }); err != nil {
		s.log.Debug("keystore: could not end a broken connection's thread", "thread", p.receipt.Thread, "err", err)
	}
}

// onServerOf connects to the server that ran r's transaction, ends its
// thread (unless the server has restarted since) and waits until it is
// gone, then runs then on that connection; it tries again until ctx ends.
func (s *Store) onServerOf(ctx context.Context, r Receipt, then func(*sqlx.Conn) error) error {
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		err := s.onServerOfOnce(ctx, r, then)
		if err == nil {
			return nil
		}
		if sleep(ctx, pause) != nil {
			return err
		}
	}
}

// onServerOfOnce is one try of onServerOf, on one connection.
func (s *Store) onServerOfOnce(ctx context.Context, r Receipt, then func(*sqlx.Conn) error) error {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	here, err := serverThreads.of(ctx, conn)
	if err != nil {
		return err
	}
	if here.Server != r.Server {
		// Another server behind the same address (a load balancer over
		// Galera nodes): thread ids are the server's own. A new
		// connection may reach the right one.
		discard(conn)
		return fmt.Errorf("keystore: settle: connected to %s, the transaction ran on %s", here.Server, r.Server)
	}
	// A run of the server gives its threads ids of its own; after a
	// restart, nothing of the old run is still going, and the old id may
	// be a new connection's. (The start is exact within a second: both
	// halves of it come from the statement's start time.)
	if sameRun := abs(here.Started-r.Started) <= 1; sameRun {
		// Not a placeholder: MySQL prepares no KILL. A uint64 formats as
		// digits only.
		if _, err := conn.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatUint(r.Thread, 10)); err != nil && !isUnknownThread(err) {
			return fmt.Errorf("keystore: settle: kill thread %d: %w", r.Thread, err)
		}
		if err := waitThreadGone(ctx, conn, r.Thread); err != nil {
			return err
		}
	}
	return then(conn)
}

// waitThreadGone waits until no thread of id is in the server's process
// list.
func waitThreadGone(ctx context.Context, conn *sqlx.Conn, id uint64) error {
	for pause := 500 * time.Microsecond; ; pause = min(2*pause, 5*time.Millisecond) {
		var n int
		if err := conn.GetContext(ctx, &n, `SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?`, id); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := sleep(ctx, pause); err != nil {
			return fmt.Errorf("keystore: settle: thread %d still running: %w", id, err)
		}
	}
}

// receiptTable returns the table a receipt of id is written to.
func receiptTable(id string) (string, bool) {
	switch {
	case strings.HasPrefix(id, "evt_"):
		return "keystore_audit_events", true
	case strings.HasPrefix(id, "rcp_"):
		return "keystore_receipts", true
	case strings.HasPrefix(id, "key_"):
		return "keystore_keys", true
	}
	return "", false
}

// pending is the receipt of the transaction being built and sent: the
// first trail written into it (see Store.trail) takes its ID, and the
// connection that sends it fills in the rest. It also collects what the
// transaction changed, which its last statements write to the change feed.
type pending struct {
	noReceipt bool // behind Vitess (session.go): no thread to name
	receipt   Receipt
	changes   []string // what the transaction changed, for the change feed (changes.go)
}

type pendingKey struct{}

// withPending returns ctx carrying p, for the trail and the sending of one
// transaction.
func withPending(ctx context.Context, p *pending) context.Context {
	return context.WithValue(ctx, pendingKey{}, p)
}

// pendingFrom returns the pending receipt ctx carries, or nil.
func pendingFrom(ctx context.Context) *pending {
	p, _ := ctx.Value(pendingKey{}).(*pending)
	return p
}

// claim returns a new receipt id with prefix for the first trail written
// into p, and "" after that (or when p is nil).
func (p *pending) claim(prefix string) string {
	if p == nil || p.receipt.ID != "" {
		return ""
	}
	p.receipt.ID = newID(prefix)
	return p.receipt.ID
}

// keyIsReceipt makes the row of keyID, which the transaction being built
// inserts, its receipt when the Store writes no audit events: keys are
// never deleted (DeleteKey marks them), so the row is as good a receipt
// as one of keystore_receipts, and costs nothing more.
func (s *Store) keyIsReceipt(ctx context.Context, keyID string) {
	if p := pendingFrom(ctx); p != nil && s.noAudit && p.receipt.ID == "" {
		p.receipt.ID = keyID
	}
}

// newPending returns the pending receipt of one attempt of a transaction.
func (s *Store) newPending() *pending { return &pending{noReceipt: s.session.vitess.Load()} }

// unclaim forgets p's id, for a transaction built again after the one
// that claimed it was rolled back.
func (p *pending) unclaim() {
	if p != nil {
		p.receipt.ID = ""
	}
}

// sentOn records that p's transaction is sent on conn.
// When the server will not say (one that keeps its status elsewhere), the
// transaction goes without: a lost reply to it stays ErrAmbiguousCommit.
func (p *pending) sentOn(ctx context.Context, conn *sqlx.Conn) error {
	if p.noReceipt {
		return nil
	}
	t, err := serverThreads.of(ctx, conn)
	if err != nil {
		return err // the connection broke: the transaction could not have been sent either
	}
	p.receipt.Server, p.receipt.Thread, p.receipt.Started = t.Server, t.Thread, t.Started
	return nil
}
