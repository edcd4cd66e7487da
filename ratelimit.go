package keystore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
)

// RatelimitRequest names a ratelimit of the key or its owner that
// VerifyKey applies besides the auto-applied ones.
type RatelimitRequest struct {
	Name string // a ratelimit of the key, else of its owner
	Cost int64  // tokens this call takes; 0 means 1
}

// RatelimitResult is the outcome of one ratelimit a verification applied.
type RatelimitResult struct {
	Name      string
	Limit     int64
	Duration  time.Duration
	Remaining int64     // tokens left in the current window after this call
	Reset     time.Time // when the window ends
	Exceeded  bool
	Identity  bool // the owner's limit, shared by all its keys
}

// Ratelimits are enforced by the database, which is the authority: a limit
// of Limit per Duration admits at most Limit tokens in each fixed window of
// Duration (windows start at multiples of Duration since the Unix epoch, by
// the Store's clock), across every Store and process on the database. Each
// limit is one row of keystore_ratelimits, keyed by the key's id (or, for
// an owner's limit, the identity's id, so that all its keys share it) and
// the limit's name; the row holds the current window (its start and the
// Duration it was opened with: a changed Duration opens a new one) and the
// tokens taken in it.
//
// A verification takes the tokens of every limit it applies in one
// transaction, one upsert per limit in (subject, name) order, so that two
// verifications never wait for each other in opposite orders. Each upsert
// hands back the window's new total in its reply (LAST_INSERT_ID), and if
// any total is past its limit the transaction rolls back: the limits pass
// or fail together, and a call that is rate limited takes no token. A
// database that cannot be reached is an error, never a pass: the limits
// fail closed.

// appliedLimit is a ratelimit a verification applies.
type appliedLimit struct {
	Ratelimit
	subject  string // the key's id, or the owner's identity id
	identity bool
	cost     int64
}

// appliedLimits returns the limits a verification of the key read as v
// applies: every auto-applied limit of the key and of its owner at cost 1,
// and the requested ones at their cost; of a key's and an owner's limit of
// one name, the key's. A requested name that neither has is a
// *ValidationError naming it. The result is in (subject, name) order.
func appliedLimits(v Verification, requested []RatelimitRequest) ([]appliedLimit, error) {
	byName := map[string]appliedLimit{}
	add := func(subject string, identity bool, rls []Ratelimit) {
		for _, rl := range rls {
			if _, ok := byName[rl.Name]; !ok {
				byName[rl.Name] = appliedLimit{Ratelimit: rl, subject: subject, identity: identity}
			}
		}
	}
	add(v.KeyID, false, v.Ratelimits) // the key's first: they win a name
	if v.IdentityID != "" {
		add(v.IdentityID, true, v.IdentityRatelimits)
	}
	var out []appliedLimit
	requestedCost := map[string]int64{}
	for i, r := range requested {
		if _, ok := byName[r.Name]; !ok {
			return nil, invalid("Ratelimits["+strconv.Itoa(i)+"].Name", "the key and its owner have no ratelimit %q", r.Name)
		}
		requestedCost[r.Name] = max(r.Cost, 1)
	}
	for name, l := range byName {
		if cost, ok := requestedCost[name]; ok {
			l.cost = cost
		} else if l.AutoApply {
			l.cost = 1
		} else {
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b appliedLimit) int {
		return cmp.Or(cmp.Compare(a.subject, b.subject), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// takeTokens takes the tokens of limits (in (subject, name) order), all or
// none, and returns each limit's outcome and whether all passed. A call
// that does not pass takes nothing, and each result says what is left
// without it.
func (s *Store) takeTokens(ctx context.Context, limits []appliedLimit, now time.Time) ([]RatelimitResult, bool, error) {
	used := make([]int64, len(limits))
	_, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		passed := true
		for i, l := range limits {
			ms := l.Duration.Milliseconds()
			total, err := addTokens(ctx, tx, l, now.UnixMilli()/ms*ms)
			if err != nil {
				return struct{}{}, err
			}
			used[i], passed = total, passed && total <= l.Limit
		}
		if !passed {
			return struct{}{}, errRateLimited // rolls back every token taken
		}
		return struct{}{}, nil
	})
	passed := err == nil
	if err != nil && !errors.Is(err, errRateLimited) {
		return nil, false, err
	}
	results := make([]RatelimitResult, len(limits))
	for i, l := range limits {
		ms := l.Duration.Milliseconds()
		left := l.Limit - used[i]
		if !passed {
			left += l.cost // undone
		}
		results[i] = RatelimitResult{Name: l.Name, Limit: l.Limit, Duration: l.Duration, Remaining: max(left, 0),
			Reset: time.UnixMilli((now.UnixMilli()/ms + 1) * ms).UTC(), Exceeded: used[i] > l.Limit, Identity: l.identity}
	}
	return results, passed, nil
}

// errRateLimited ends a token transaction that must not commit.
var errRateLimited = errors.New("keystore: rate limited")

// addTokens adds l.cost to l's row for the window that starts at start
// (Unix milliseconds), starting the count afresh when the row's window is an
// older one or of another duration (the limit was changed), and returns the
// window's total. A Store whose clock is behind another's adds to the newer
// window rather than restart an older one, so skewed clocks never reopen a
// window. MySQL evaluates the assignments left to right, so each sees the
// old values of the columns after it. The INSERT's arguments are repeated
// rather than read with VALUES(), which MySQL deprecates and MariaDB spells
// differently.
func addTokens(ctx context.Context, tx *sqlx.Tx, l appliedLimit, start int64) (int64, error) {
	ms := l.Duration.Milliseconds()
	res, err := tx.ExecContext(ctx, `INSERT INTO keystore_ratelimits (subject, name, window_start, duration_ms, used)
		VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE
		used = LAST_INSERT_ID(IF(duration_ms = ? AND window_start >= ?, used + ?, ?)),
		window_start = IF(duration_ms = ?, GREATEST(window_start, ?), ?),
		duration_ms = ?`,
		l.subject, l.Name, start, ms, l.cost, ms, start, l.cost, l.cost, ms, start, start, ms)
	if err != nil {
		return 0, fmt.Errorf("keystore: take ratelimit tokens: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return l.cost, err // a new row: this call's tokens are the window's
	}
	return res.LastInsertId()
}
