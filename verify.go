package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jmoiron/sqlx"
)

// VerifyKeyRequest asks whether a plaintext key is valid in a key space, and
// spends its credits.
type VerifyKeyRequest struct {
	// WorkspaceID, when set, confines the verification to that workspace:
	// a key of another workspace is CodeNotFound, whatever its key space.
	// Leave it empty only where key-space ids are unique across
	// workspaces.
	WorkspaceID string
	// KeySpaceID is the key space the key must belong to. It is matched
	// by id alone: without WorkspaceID, a key of any workspace whose key
	// space has this id verifies.
	KeySpaceID string
	Key        string // the plaintext, as returned by CreateKey
	// Cost is the number of credits a valid verification spends; 0 means 1.
	// A key without credits (unlimited) spends nothing.
	Cost int64
	// NoSpend verifies without spending or checking credits, and without
	// applying ratelimits.
	NoSpend bool
	// Permissions is a permission query the key must satisfy; "" checks
	// nothing. Names of letters, digits and . _ - : * / ("*" is literal)
	// joined by AND and OR (any letter case), with parentheses; AND binds
	// tighter than OR; at most 1000 characters. It is evaluated against
	// the key's merged permissions (direct and through roles).
	Permissions string
	// Ratelimits names limits of the key or its owner to apply besides
	// the auto-applied ones (which apply to every verification at cost 1),
	// at most 50, each name once. See [RatelimitResult] for the outcome.
	Ratelimits []RatelimitRequest
}

// VerificationCode says why a verification is valid or not.
type VerificationCode string

const (
	CodeValid         VerificationCode = "VALID"          // enabled and unexpired; Cost spent unless unlimited or NoSpend
	CodeNotFound      VerificationCode = "NOT_FOUND"      // unknown, deleted, of another key space, or of another WorkspaceID
	CodeExpired       VerificationCode = "EXPIRED"        // Expires is not after the Store's clock
	CodeDisabled      VerificationCode = "DISABLED"       // the key is disabled; comes before CodeExpired
	CodeUsageExceeded VerificationCode = "USAGE_EXCEEDED" // fewer credits left than Cost; nothing spent
	// CodeInsufficientPermissions: the key does not satisfy the request's
	// permission query; nothing spent.
	CodeInsufficientPermissions VerificationCode = "INSUFFICIENT_PERMISSIONS"
	// CodeRateLimited: a ratelimit has no tokens left in its window;
	// nothing spent and no token taken.
	CodeRateLimited VerificationCode = "RATE_LIMITED"
)

// Verification is the answer of VerifyKey. Everything but Valid and Code is
// empty when Code is CodeNotFound.
type Verification struct {
	Valid       bool             // true exactly when Code is CodeValid
	Code        VerificationCode // why the key is valid or not
	KeyID       string           // the key's id
	WorkspaceID string           // the key's workspace
	IdentityID  string           // the owner's identity; "" when the key has no owner
	ExternalID  string           // the owner's ExternalID; "" when the key has no owner
	// Remaining is the credits left after this verification (nil:
	// unlimited). With CodeUsageExceeded it is what is left, less than Cost.
	Remaining          *int64
	Expires            *time.Time     // nil: never expires
	Permissions        []string       // merged: direct and through roles, sorted
	Roles              []string       // sorted
	Ratelimits         []Ratelimit    // the key's
	IdentityRatelimits []Ratelimit    // the owner's
	Meta               map[string]any // the key's; nil when none
	IdentityMeta       map[string]any // the owner's; nil when none or without owner
	// RatelimitResults is the outcome of each ratelimit applied; nil when
	// none was (NoSpend applies none).
	RatelimitResults []RatelimitResult
}

// Largest key VerifyKey accepts: a 16-character prefix, "_" and 255 random
// bytes in base64 take 357 bytes.
const maxKeyBytes = 512

// VerifyKey looks the key up by its SHA-256 hash (a unique index) and, if it
// is enabled, unexpired and of req.KeySpaceID (and req.WorkspaceID, if set), spends req.Cost credits with
// one conditional UPDATE. It costs one statement for a key without credits
// and two with credits; it never holds a transaction open. With a replica
// (see [WithReplica]) the lookup reads the replica, falling back to the
// primary when the key is not there yet; credits are always spent on the
// primary. With [WithVerifyCache] the lookup comes from memory, within
// that option's staleness bound.
//
// Credits never go below zero and are never spent twice: the UPDATE checks
// and decrements in one statement, so of any number of concurrent
// verifications exactly as many succeed as there were credits. A due refill
// (daily at 00:00 UTC, or monthly on Refill.Day, clamped to the month's last
// day, by the Store's clock) is applied by the same UPDATE, so it happens at
// most once per period.
//
// The checks come in this order, and the first that fails gives the code:
// CodeNotFound, CodeDisabled, CodeExpired, CodeInsufficientPermissions
// (req.Permissions), CodeRateLimited (the ratelimits applied, see
// ratelimit.go: the database counts every token, so a limit never admits
// more than its Limit in a window, across all Stores), CodeUsageExceeded.
// A verification that is not valid spends no credits, and one that is rate
// limited takes no ratelimit token; one whose credits fall short has taken
// its tokens. Ratelimit tokens come from leases the Store takes from the
// database (ratelimit.go): most calls take them from memory, and a call
// whose leases are spent runs one transaction on the primary for a new one;
// the database failing then is an error, never a valid answer.
//
// An invalid key is an answer, not an error: unknown, deleted,
// other-key-space and other-workspace keys give CodeNotFound with a nil
// error. Errors: ErrInvalidInput for a malformed request (empty or
// oversized key, negative cost, malformed permission query: then nothing is
// read); ErrRetriesExhausted when the spend kept failing with retryable
// errors or kept meeting changed credits; ErrAmbiguousCommit when the
// spend's UPDATE was sent and its reply lost (the credit may have been
// spent: it is never sent twice); ErrTooManyUnknownKeys, with a cache,
// for a key neither held nor known during a flood of made-up keys
// (nothing read); otherwise a database error, and nothing was spent.
func (s *Store) VerifyKey(ctx context.Context, req VerifyKeyRequest) (Verification, error) {
	if err := req.validate(); err != nil {
		return Verification{}, err
	}
	now, cost := s.clock(), max(req.Cost, 1)
	hash := hashKey(req.Key)
	var row verifyRow
	var fromCache bool
	var err error
	if s.cache != nil {
		row, fromCache, err = s.cachedKey(ctx, req, hash, cost, now)
	} else {
		row, err = s.readKey(ctx, req, hash, cost, now)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return Verification{Code: CodeNotFound}, nil
	}
	if err != nil {
		return Verification{}, fmt.Errorf("keystore: verify key: %w", err)
	}
	if row.DeletedAt.Valid || row.KeySpaceID != req.KeySpaceID || req.WorkspaceID != "" && row.WorkspaceID != req.WorkspaceID {
		return Verification{Code: CodeNotFound}, nil
	}
	v := row.judge(req, now)
	if v.Code != CodeValid {
		return v, nil
	}
	limits, err := appliedLimits(v, req.Ratelimits)
	if err != nil {
		return Verification{}, err
	}
	if len(limits) > 0 && !req.NoSpend {
		results, passed, err := s.takeTokens(ctx, limits, now)
		if err != nil {
			return Verification{}, fmt.Errorf("keystore: verify key: %w", err)
		}
		v.RatelimitResults = results
		if !passed {
			v.Valid, v.Code = false, CodeRateLimited
			return v, nil
		}
	}
	if v.Remaining == nil || req.NoSpend {
		return v, nil
	}
	spent, err := s.spend(ctx, req, row, cost, now)
	if fromCache && (spent.Remaining == nil || *spent.Remaining != *v.Remaining-cost) {
		// Spent elsewhere, or changed: the credits the cache holds are
		// out of date, and a spend from them would miss once more.
		s.cache.forget(string(hash))
	}
	spent.RatelimitResults = v.RatelimitResults
	return spent, err
}

// readKey reads the key of hash for req from the database. With a replica
// (see [WithReplica]) it reads the replica, and the primary when the key is
// not there or would not verify: a lagging replica may not know yet that
// the key was enabled, extended or given credits, so only the primary may
// say no. It returns sql.ErrNoRows for no key.
func (s *Store) readKey(ctx context.Context, req VerifyKeyRequest, hash []byte, cost int64, now time.Time) (verifyRow, error) {
	var row verifyRow
	var fromReplica bool
	lookup := func(ctx context.Context, db *sqlx.DB) error {
		fromReplica = db != s.db
		stmt, err := s.prepared.get(ctx, db, selectVerify)
		if err != nil {
			return err
		}
		err = row.scan(stmt.QueryRowContext(ctx, hash))
		if errors.Is(err, sql.ErrNoRows) { // a key rerolled within its grace period?
			err = row.scan(db.QueryRowContext(ctx, selectVerifyByOldHash, hash, utc(now)))
		}
		return err
	}
	err := s.read(ctx, lookup)
	if err == nil && fromReplica && !row.DeletedAt.Valid && !row.passes(req, cost, now) {
		err = s.readPrimary(ctx, lookup)
	}
	return row, err
}

// passes reports whether the key read as r would verify for req: valid, and
// with enough credits unless it has none or req spends none.
func (r verifyRow) passes(req VerifyKeyRequest, cost int64, now time.Time) bool {
	v := r.judge(req, now)
	return v.Code == CodeValid && (v.Remaining == nil || req.NoSpend || *v.Remaining >= cost)
}

// Validate reports the first field of r that VerifyKey would refuse, as a
// *ValidationError (errors.Is ErrInvalidInput), without any I/O: a caller
// can check a request it builds once, such as a route's, at start-up. A
// valid request can still be refused once the key is read, for naming a
// ratelimit the key and its owner lack.
func (r VerifyKeyRequest) Validate() error { return r.validate() }

func (r *VerifyKeyRequest) validate() error {
	if r.WorkspaceID != "" {
		if err := validateID("WorkspaceID", r.WorkspaceID, limitIDChars); err != nil {
			return err
		}
	}
	if err := validateID("KeySpaceID", r.KeySpaceID, limitIDChars); err != nil {
		return err
	}
	if r.Key == "" {
		return invalid("Key", "must not be empty")
	}
	if len(r.Key) > maxKeyBytes {
		return invalid("Key", "must be at most %d bytes", maxKeyBytes)
	}
	if r.Cost < 0 {
		return invalid("Cost", "must not be negative (use NoSpend to verify without spending)")
	}
	if r.Permissions != "" {
		if _, err := matchPermissions("Permissions", r.Permissions, nil); err != nil {
			return err
		}
	}
	if len(r.Ratelimits) > limitRatelimits {
		return invalid("Ratelimits", "must have at most %d entries", limitRatelimits)
	}
	for i, rl := range r.Ratelimits {
		field := "Ratelimits[" + strconv.Itoa(i) + "]"
		if err := validateID(field+".Name", rl.Name, limitRatelimitNameChars); err != nil {
			return err
		}
		if slices.ContainsFunc(r.Ratelimits[:i], func(o RatelimitRequest) bool { return o.Name == rl.Name }) {
			return invalid(field+".Name", "duplicate name %q", rl.Name)
		}
		if rl.Cost < 0 || rl.Cost > limitTokens {
			return invalid(field+".Cost", "must be 0..2^53")
		}
	}
	return nil
}

// spend takes cost credits from the key read as row, with one conditional
// UPDATE that also applies a due refill. LAST_INSERT_ID(expr) hands the new
// balance back in the UPDATE's own reply, so no read follows a successful
// spend. When the UPDATE matches nothing, the key changed since it was read
// or has too few credits; a fresh read from the primary says which, and if
// another transaction added credits meanwhile, the spend is tried again.
// An UPDATE that failed with a retryable error (a lock-wait timeout, a
// Galera conflict with a spend on another node) is tried again after the
// Store's backoff. Either way the Store's MaxAttempts bounds the UPDATEs.
func (s *Store) spend(ctx context.Context, req VerifyKeyRequest, row verifyRow, cost int64, now time.Time) (Verification, error) {
	if err := s.session.verify(ctx, s.db); err != nil {
		return Verification{}, err
	}
	cfg := &s.retryConfig
	var lastErr error
	for attempt := 1; ; attempt++ {
		v := row.judge(req, now)
		if v.Code != CodeValid || v.Remaining == nil {
			return v, nil
		}
		if *v.Remaining < cost {
			v.Valid, v.Code = false, CodeUsageExceeded
			return v, nil
		}
		if attempt > cfg.maxAttempts {
			return Verification{}, &RetryError{Attempts: cfg.maxAttempts, Err: lastErr}
		}
		left, spent, err := s.trySpend(ctx, row.ID, row.state().periodStart(now), cost, now)
		if err != nil && !IsRetryable(err) {
			return Verification{}, err
		}
		if lastErr = err; lastErr == nil {
			lastErr = errConcurrentChange
		} else if attempt == cfg.maxAttempts {
			return Verification{}, &RetryError{Attempts: attempt, Err: err}
		} else if err := cfg.retried(ctx, attempt, err); err != nil {
			return Verification{}, err
		}
		if spent {
			v.Remaining = &left
			return v, nil
		}
		err = row.scan(s.db.QueryRowContext(ctx, selectVerifyByID, row.ID))
		if errors.Is(err, sql.ErrNoRows) || err == nil && row.DeletedAt.Valid {
			return Verification{Code: CodeNotFound}, nil
		}
		if err != nil {
			return Verification{}, fmt.Errorf("keystore: verify key: %w", err)
		}
	}
}

// trySpend is the conditional UPDATE. MySQL evaluates SET assignments left
// to right, so refilled_at's IF still sees the old refilled_at.
func (s *Store) trySpend(ctx context.Context, keyID string, periodStart time.Time, cost int64, now time.Time) (left int64, spent bool, err error) {
	period := utc(periodStart)
	if err := ctx.Err(); err != nil {
		return 0, false, err // nothing sent
	}
	res, err := s.db.ExecContext(ctx, `UPDATE keystore_keys SET
		remaining = LAST_INSERT_ID(IF(refill_interval IS NOT NULL AND refilled_at < ?, refill_amount, remaining) - ?),
		refilled_at = IF(refill_interval IS NOT NULL AND refilled_at < ?, ?, refilled_at)
		WHERE id = ? AND deleted_at IS NULL AND enabled = 1 AND (expires IS NULL OR expires > ?)
		AND IF(refill_interval IS NOT NULL AND refilled_at < ?, refill_amount, remaining) >= ?`,
		period, cost, period, period, keyID, utc(now), period, cost)
	if err != nil {
		err = fmt.Errorf("keystore: spend credits: %w", err)
		lost := isConnectionLost(err) && !errors.Is(err, driver.ErrBadConn)
		if lost || ctx.Err() != nil {
			// The UPDATE was sent and its reply lost, or the context ended
			// while it ran: it may have spent. Sending it again could spend
			// twice, so the caller is told (and the error still matches
			// the context's).
			err = &AmbiguousCommitError{Err: err}
		}
		return 0, false, err
	}
	n, err := res.RowsAffected()
	if err != nil || n != 1 {
		return 0, false, err
	}
	left, err = res.LastInsertId()
	return left, err == nil, err
}

// verifyRow is a key read for verification: the key with its sets, plus
// what only verification needs.
type verifyRow struct {
	keyRow
	DeletedAt          dbTime
	IdentityMeta       jsonColumn[map[string]any]
	IdentityRatelimits jsonColumn[[]ratelimitJSON]
}

// verifyColumns is what a verification reads of a key and nothing else:
// the key with its sets and its live owner's copies, from its row (no
// join). verifyRow.dest lists them in this order: change both together.
const verifyColumns = `k.id, k.workspace_id, k.key_space_id,
	IF(k.owner_external_id IS NULL, NULL, k.identity_id), k.owner_external_id, k.meta, k.expires,
	k.enabled, k.remaining, k.refill_interval, k.refill_amount, k.refill_day, k.refilled_at, k.deleted_at,
	k.permissions, k.roles, k.ratelimits, k.owner_meta, k.owner_ratelimits`

const (
	selectVerifyFrom = `SELECT ` + verifyColumns + ` FROM keystore_keys k `
	selectVerify     = selectVerifyFrom + `WHERE k.hash = ?`
	// The key an old hash of a rerolled key still names, until it expires.
	selectVerifyByOldHash = selectVerifyFrom + `JOIN keystore_old_hashes o ON o.key_id = k.id
		WHERE o.hash = ? AND o.expires_at > ?`
	selectVerifyByID = selectVerifyFrom + `WHERE k.id = ?`
)

// scan reads a row of selectVerifyFrom, naming the fields in column order
// rather than going through sqlx's reflection, which took a tenth of
// VerifyKey's client time.
func (r *verifyRow) scan(row interface{ Scan(...any) error }) error {
	return row.Scan(r.dest(&r.ID, &r.WorkspaceID, &r.KeySpaceID, &r.Enabled)...)
}

// dest returns where the columns of verifyColumns go, the columns that
// are NOT NULL in the table to the targets given (a LEFT JOIN may find
// none of them).
func (r *verifyRow) dest(id, workspaceID, keySpaceID, enabled any) []any {
	k := &r.keyRow
	return []any{id, workspaceID, keySpaceID, &k.IdentityID, &k.ExternalID, &k.Meta, &k.Expires,
		enabled, &k.Remaining, &k.RefillInterval, &k.RefillAmount, &k.RefillDay, &k.RefilledAt, &r.DeletedAt,
		&k.Permissions, &k.Roles, &k.Ratelimits, &r.IdentityMeta, &r.IdentityRatelimits}
}

// verification judges a live key at now, before any spending: disabled,
// then expired. Remaining is the balance with a due refill counted.
func (r verifyRow) verification(now time.Time) Verification {
	k := r.key(now)
	v := Verification{Valid: true, Code: CodeValid, KeyID: k.ID, WorkspaceID: k.WorkspaceID,
		IdentityID: k.IdentityID, ExternalID: k.ExternalID, Expires: k.Expires,
		Permissions: k.Permissions, Roles: k.Roles, Ratelimits: k.Ratelimits,
		IdentityRatelimits: ratelimitsFromJSON(r.IdentityRatelimits.V), Meta: k.Meta, IdentityMeta: r.IdentityMeta.V}
	if k.Credits != nil {
		v.Remaining = &k.Credits.Remaining
	}
	switch {
	case !k.Enabled:
		v.Valid, v.Code = false, CodeDisabled
	case k.Expires != nil && !k.Expires.After(now):
		v.Valid, v.Code = false, CodeExpired
	}
	return v
}

// judge is the answer for the key read as r, before any spending, in the
// order of the checks: disabled, expired, then req's permission query.
func (r verifyRow) judge(req VerifyKeyRequest, now time.Time) Verification {
	v := r.verification(now)
	if v.Code == CodeValid && req.Permissions != "" {
		if ok, _ := matchPermissions("Permissions", req.Permissions, v.Permissions); !ok { // validated already
			v.Valid, v.Code = false, CodeInsufficientPermissions
		}
	}
	return v
}
