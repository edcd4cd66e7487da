package keystore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
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
// tokens the database has granted in it.
//
// A Store asks the database for more tokens than one call needs, a lease:
// the call's cost and a tenth of what would be left after it (at most
// leaseMax). The database counts the whole lease as used, so no Store can
// hand out more than the database granted; the Store then serves calls
// from its lease in memory, without a round trip, until the lease is spent
// or its window ends (unused tokens of an ended window are lost: counted,
// never admitted). Because a lease is a tenth of what is left, leases
// shrink as a window fills, and a burst through several Stores still gets
// nearly all of the limit.
//
// A call whose limits are not all covered by leases asks the database for
// the rest in one transaction, limit by limit in (subject, name) order, so
// that two calls never wait for each other in opposite orders. If any limit
// has fewer tokens left than the call's cost, the transaction rolls back
// and the tokens the call took from its leases go back: limits pass or fail
// together, and a rate-limited call takes no token. A call that needs the
// database and cannot reach it is an error, never a pass: the limits fail
// closed.

// leaseMax is the most tokens beyond its cost that one call asks for.
const leaseMax = 1000

// tokenLeases holds, per limit, the tokens the database granted this Store
// and it has not used. It is safe for concurrent use.
type tokenLeases struct {
	mu sync.Mutex
	m  map[leaseKey]*lease
	// grants are the striped locks of takeTokens, one token each, so that
	// a call waits for one within its context.
	grants     [64]chan struct{}
	grantsOnce sync.Once
}

type leaseKey struct{ subject, name string }

// lease is a Store's unused grant for one window of one limit.
type lease struct {
	windowStart, durationMs int64
	left                    int64 // granted and not used
	used                    int64 // the window's total in the database after the last grant
}

// take takes cost tokens of k's lease for the window, if it holds them,
// and returns the lease as it is after (nil when it did not hold them).
func (t *tokenLeases) take(k leaseKey, windowStart, durationMs, cost int64) *lease {
	l := t.m[k]
	if l == nil || l.windowStart != windowStart || l.durationMs != durationMs || l.left < cost {
		return nil
	}
	l.left -= cost
	return l
}

// put adds a grant (tokens left over, and the window's total) to k's lease,
// replacing a lease of another window, and returns the lease.
func (t *tokenLeases) put(k leaseKey, windowStart, durationMs, left, used int64) *lease {
	if t.m == nil {
		t.m = map[leaseKey]*lease{}
	}
	l := t.m[k]
	if l == nil || l.windowStart != windowStart || l.durationMs != durationMs {
		if len(t.m) >= 100_000 {
			t.prune(windowStart)
		}
		l = &lease{windowStart: windowStart, durationMs: durationMs}
		t.m[k] = l
	}
	l.left += left
	l.used = max(l.used, used)
	return l
}

// prune forgets the leases of windows that started before windowStart
// (their tokens can never be used again), and every lease if that is not
// enough to keep the map small.
func (t *tokenLeases) prune(windowStart int64) {
	for k, l := range t.m {
		if l.windowStart+l.durationMs <= windowStart {
			delete(t.m, k)
		}
	}
	if len(t.m) >= 100_000 {
		clear(t.m)
	}
}

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

// takeTokens takes the tokens of limits (in (subject, name) order) from
// the Store's leases and, for the limits they do not cover, from the
// database, all or none, and returns each limit's outcome and whether all
// passed.
//
// Only one call of the Store at a time asks the database for a given
// limit's tokens (a striped lock, held across the transaction and until
// the grant is in the lease), and a call that waited for another looks at
// the lease again first. So a call is denied only when the database has no
// tokens left and none are on their way to this Store's lease: one Store
// admits exactly the limit.
func (s *Store) takeTokens(ctx context.Context, limits []appliedLimit, now time.Time) ([]RatelimitResult, bool, error) {
	results := make([]RatelimitResult, len(limits))
	all := make([]int, len(limits))
	for i := range all {
		all[i] = i
	}
	fromDB := s.leases.takeAll(limits, now, results, all)
	if len(fromDB) == 0 {
		return results, true, nil
	}
	taken := without(all, fromDB)
	unlock, err := s.leases.lockGrants(ctx, limits, fromDB)
	if err != nil {
		s.leases.giveBack(limits, taken, now, results)
		return nil, false, fmt.Errorf("keystore: take ratelimit tokens: %w", err)
	}
	defer unlock()
	still := s.leases.takeAll(limits, now, results, fromDB) // refilled while this call waited?
	taken, fromDB = append(taken, without(fromDB, still)...), still
	if len(fromDB) == 0 {
		return results, true, nil
	}

	type grant struct{ tokens, used int64 }
	grants := make([]grant, len(fromDB))
	_, err = tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		passed := true
		for j, i := range fromDB {
			l := limits[i]
			start, ms := windowOf(l, now)
			tokens, used, err := grantTokens(ctx, tx, l, start, ms)
			if err != nil {
				return struct{}{}, err
			}
			grants[j], passed = grant{tokens, used}, passed && tokens >= l.cost
		}
		if !passed {
			return struct{}{}, errRateLimited // rolls back every grant
		}
		return struct{}{}, nil
	})
	passed := err == nil
	if err != nil && !errors.Is(err, errRateLimited) {
		s.leases.giveBack(limits, taken, now, results)
		return nil, false, fmt.Errorf("keystore: take ratelimit tokens: %w", err)
	}
	if !passed {
		s.leases.giveBack(limits, taken, now, results)
	}
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	for j, i := range fromDB {
		l, g := limits[i], grants[j]
		start, ms := windowOf(l, now)
		if passed {
			held := s.leases.put(leaseKey{l.subject, l.Name}, start, ms, g.tokens-l.cost, g.used)
			results[i] = l.result(start, held.used-held.left, false)
		} else {
			results[i] = l.result(start, g.used-g.tokens, g.tokens < l.cost) // nothing was granted
		}
	}
	return results, passed, nil
}

// without returns the elements of a that are not in b.
func without(a, b []int) []int {
	return slices.DeleteFunc(slices.Clone(a), func(i int) bool { return slices.Contains(b, i) })
}

// takeAll takes, from the leases, the tokens of the limits of indexes that
// the leases cover, fills their results, and returns the indexes of those
// they do not cover.
func (t *tokenLeases) takeAll(limits []appliedLimit, now time.Time, results []RatelimitResult, indexes []int) (uncovered []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range indexes {
		l := limits[i]
		start, ms := windowOf(l, now)
		if held := t.take(leaseKey{l.subject, l.Name}, start, ms, l.cost); held != nil {
			results[i] = l.result(start, held.used-held.left, false)
		} else {
			uncovered = append(uncovered, i)
		}
	}
	return uncovered
}

// giveBack returns to the leases the tokens a call took from them (the
// limits of indexes taken) and refreshes their results, unless the lease
// has moved on to another window meanwhile.
func (t *tokenLeases) giveBack(limits []appliedLimit, taken []int, now time.Time, results []RatelimitResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range taken {
		l := limits[i]
		start, ms := windowOf(l, now)
		if held := t.m[leaseKey{l.subject, l.Name}]; held != nil && held.windowStart == start && held.durationMs == ms {
			held.left += l.cost
			results[i] = l.result(start, held.used-held.left, false)
		}
	}
}

// lockGrants locks the grant stripes of the limits of indexes, in stripe
// order, and returns the function that unlocks them; or ctx's error, with
// none locked, if ctx ends first.
func (t *tokenLeases) lockGrants(ctx context.Context, limits []appliedLimit, indexes []int) (func(), error) {
	t.grantsOnce.Do(func() {
		for i := range t.grants {
			t.grants[i] = make(chan struct{}, 1)
		}
	})
	var stripes []int
	for _, i := range indexes {
		h := fnv.New32a()
		h.Write([]byte(limits[i].subject))
		h.Write([]byte{0})
		h.Write([]byte(limits[i].Name))
		stripes = append(stripes, int(h.Sum32()%uint32(len(t.grants))))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	unlock := func(locked []int) {
		for _, i := range locked {
			<-t.grants[i]
		}
	}
	for n, i := range stripes {
		select {
		case t.grants[i] <- struct{}{}:
		case <-ctx.Done():
			unlock(stripes[:n])
			return nil, ctx.Err()
		}
	}
	return func() { unlock(stripes) }, nil
}

// windowOf returns the start of l's window at now and its length, in Unix
// milliseconds.
func windowOf(l appliedLimit, now time.Time) (start, ms int64) {
	ms = l.Duration.Milliseconds()
	return now.UnixMilli() / ms * ms, ms
}

// result is l's outcome in the window that starts at start, where spent
// tokens are used (granted and not held by this Store's lease, as far as
// the Store knows).
func (l appliedLimit) result(start, spent int64, exceeded bool) RatelimitResult {
	ms := l.Duration.Milliseconds()
	return RatelimitResult{Name: l.Name, Limit: l.Limit, Duration: l.Duration, Remaining: max(l.Limit-spent, 0),
		Reset: time.UnixMilli(start + ms).UTC(), Exceeded: exceeded, Identity: l.identity}
}

// errRateLimited ends a token transaction that must not commit.
var errRateLimited = errors.New("keystore: rate limited")

// grantTokens asks the database for a lease of l's tokens in the window
// that starts at start: the call's cost and a tenth of what would be left
// after it, at most leaseMax more, or nothing when fewer than the cost are
// left. It returns the tokens granted and the window's total after. The
// first statement moves the row to the current window, starting the count
// afresh when the row's window is an older one or of another duration (the
// limit was changed); a Store whose clock is behind another's counts in the
// newer window rather than reopen an older one. It takes the row's
// exclusive lock, under which the count is read and raised. MySQL
// evaluates the assignments left to right, so each sees the old values of
// the columns after it. Arguments are repeated rather than read with
// VALUES(), which MySQL deprecates and MariaDB spells differently.
func grantTokens(ctx context.Context, tx *sqlx.Tx, l appliedLimit, start, ms int64) (granted, used int64, err error) {
	if _, err := tx.ExecContext(ctx, `INSERT INTO keystore_ratelimits (subject, name, window_start, duration_ms, used)
		VALUES (?, ?, ?, ?, 0) ON DUPLICATE KEY UPDATE
		used = IF(duration_ms = ? AND window_start >= ?, used, 0),
		window_start = IF(duration_ms = ?, GREATEST(window_start, ?), ?),
		duration_ms = ?`,
		l.subject, l.Name, start, ms, ms, start, ms, start, start, ms); err != nil {
		return 0, 0, err
	}
	if err := tx.GetContext(ctx, &used, `SELECT used FROM keystore_ratelimits WHERE subject = ? AND name = ? FOR UPDATE`,
		l.subject, l.Name); err != nil {
		return 0, 0, err
	}
	left := l.Limit - used
	if left < l.cost {
		return 0, used, nil
	}
	granted = l.cost + min(leaseMax, (left-l.cost)/10)
	_, err = tx.ExecContext(ctx, `UPDATE keystore_ratelimits SET used = used + ? WHERE subject = ? AND name = ?`,
		granted, l.subject, l.Name)
	return granted, used + granted, err
}
