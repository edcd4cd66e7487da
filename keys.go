package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// A key's whole life, in the order it is lived: CreateKey and its write
// protocol (the key row, named column by column, and the INSERTs that write
// it, reading the owner or not), UpdateKey, DeleteKey, then the reads:
// GetKey, ListKeys and the row they scan. An owner is found or created by
// identity.go's primitives, permissions and roles are linked by sets.go and
// roles.go, every mutation's trail is built by audit.go, and onetrip.go
// sends a transaction in one round trip; VerifyKey lives in verify.go.

// CreateKey creates a key and returns its plaintext, which is not stored and
// cannot be read again. When req.ExternalID is set, the key is linked to its
// identity, created if needed; missing permissions are created; every role
// must exist. All of it commits in one transaction, retried on deadlocks, so
// any number of concurrent callers for one new ExternalID all succeed and
// exactly one identity exists. Callers that share a Store do not even race
// for it: while one call gets an owner the Store has not seen, the Store's
// other calls for that owner wait (holding no connection) until it has
// found the owner or committed it, and then use it.
//
// Errors: ErrInvalidInput (a *ValidationError naming the field) when req is
// invalid; ErrNotFound when a role does not exist. In both cases nothing is
// written. ctx ending while the call waits for the Store's own creation of
// the owner: ctx.Err(), wrapped. Otherwise the errors of [WithRetryTx]; on
// MariaDB a key without permissions or roles is mostly written in one round
// trip (see below), so a connection lost or ctx ending at any point of it,
// not only at COMMIT, is ErrAmbiguousCommit, which also matches the cause.
// Calling CreateKey again after one is safe: it finds the owner; at worst
// an extra key exists whose plaintext nobody has.
//
// Statements: on MariaDB a key without permissions or roles is 1 (one
// anonymous compound statement: see onetrip.go), or 2 when its owner
// exists but the Store has not seen it (the first finds it, the second
// reads it). Otherwise, and on MySQL, statements go one by one: 4 for an
// identity this Store has linked a key to before (BEGIN, insert key reading
// the identity, audit event, COMMIT); 5 for a new identity (BEGIN, insert
// identity, insert key, ...) and for an existing one this Store has not
// seen (the identity's INSERT finds it, the key's INSERT reads it, with
// RETURNING). MySQL lacks RETURNING: there the id is read first, so an
// existing identity costs 5 and a new one 6. Once per Store, MySQL is sent
// the block and RETURNING to find out it has neither.
// Permissions add 2 (new or not), roles 3 (link, raise
// group_concat_max_len, recompute the key's sets), ratelimits none;
// WithoutAudit saves 1 (in a block, the work of one INSERT): the key is
// its own receipt (settle.go).
func (s *Store) CreateKey(ctx context.Context, req CreateKeyRequest) (CreatedKey, error) {
	now := s.clock()
	if err := req.validate(now); err != nil {
		return CreatedKey{}, err
	}
	meta, err := metaValue(req.Meta)
	if err != nil {
		return CreatedKey{}, err
	}
	permissions, roles := sortedUnique(req.Permissions), sortedUnique(req.Roles)
	plaintext, start, hash := newSecret(req.Prefix, req.ByteLength)
	keyID := newID("key")
	var release func() // non-nil while this call holds the Store's claim on the owner
	if req.ExternalID != "" {
		if release, err = s.hints.claim(ctx, req.WorkspaceID, req.ExternalID); err != nil {
			return CreatedKey{}, err
		}
		if release != nil {
			defer release()
		}
	}

	keyRow := func() columns { return newKeyRow(&req, keyID, start, hash, meta, permissions, roles, now) }
	if len(permissions)+len(roles) == 0 {
		identityID, done, err := s.createKeyOneTrip(ctx, now, req, keyID, keyRow())
		if err != nil {
			return CreatedKey{}, withKeyID(err, keyID)
		}
		if done {
			s.hints.add(req.WorkspaceID, req.ExternalID, identityID)
			s.createdHere(hash)
			return CreatedKey{KeyID: keyID, Key: plaintext, IdentityID: identityID}, nil
		}
	}

	identityID, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (string, error) {
		s.keyIsReceipt(ctx, keyID)
		cols := keyRow()
		events := []audit{{event: EventKeyCreate, keyID: keyID}}
		var identityID string
		if req.ExternalID == "" {
			if err := insertKey(ctx, tx, cols); err != nil {
				return "", err
			}
		} else {
			identity, err := s.insertOwnedKey(ctx, tx, now, req.WorkspaceID, req.ExternalID, cols)
			if err != nil {
				return "", err
			}
			identityID = identity.ID
			events[0].identityID = identityID
			if identity.created {
				events = append(events, audit{event: EventIdentityCreate, identityID: identityID})
			} else {
				s.hints.found(release, req.WorkspaceID, req.ExternalID, identityID)
			}
		}
		if err := ensurePermissions(ctx, tx, now, req.WorkspaceID, permissions); err != nil {
			return "", err
		}
		if err := linkPermissions(ctx, tx, keyID, req.WorkspaceID, permissions); err != nil {
			return "", err
		}
		if len(roles) > 0 {
			// The roles' permissions join the key's only now, under the
			// shared locks linkRoles took on the roles (see sets.go).
			if err := linkRoles(ctx, tx, keyID, req.WorkspaceID, roles); err != nil {
				return "", err
			}
			if err := refreshKeySets(ctx, tx, keyID); err != nil {
				return "", err
			}
		}
		return identityID, s.writeTrail(ctx, tx, now, req.WorkspaceID, events...)
	})
	if err != nil {
		return CreatedKey{}, withKeyID(err, keyID)
	}
	s.hints.add(req.WorkspaceID, req.ExternalID, identityID)
	s.createdHere(hash)
	return CreatedKey{KeyID: keyID, Key: plaintext, IdentityID: identityID}, nil
}

// createKeyOneTrip creates the key row cols (owner columns unset) and its
// audit events in one round trip (see execOneTrip), and returns the key's
// owner ("" for none):
//   - an owner the Store has seen: the key's INSERT ... SELECT reads it by
//     its id under a shared lock, as insertOwnedKey does, and the block
//     stops there if it is no longer live.
//   - an owner the Store has not seen is taken to be new: the block creates
//     it, and if it exists (1062, after waiting for a racing creator to
//     commit), a second block inserts the key reading the owner by its
//     external id and says which it got.
//
// done is false when nothing was written and the caller's transaction must
// do it: the server has no anonymous blocks, the Store's retry options set
// TxOptions, or the owner was deleted (since the Store saw it, or between
// the blocks).
func (s *Store) createKeyOneTrip(ctx context.Context, now time.Time, req CreateKeyRequest, keyID string, cols columns) (identityID string, done bool, err error) {
	ctx = withPending(ctx, s.newPending())
	s.keyIsReceipt(ctx, keyID)
	var stmts []statement
	events := []audit{{event: EventKeyCreate, keyID: keyID}}
	hinted, seen := s.hints.get(req.WorkspaceID, req.ExternalID)
	switch {
	case seen:
		identityID = hinted
		stmts = append(stmts, keyInsertOwnedByID(cols, identityID), requireRowWritten)
	case req.ExternalID != "":
		created, insert := identityInsert(now, req.WorkspaceID, req.ExternalID)
		cols.set(ownerCopy(&created))
		identityID = created.ID
		events = append(events, audit{event: EventIdentityCreate, identityID: identityID})
		stmts = append(stmts, insert, keyInsert(cols))
	default:
		stmts = append(stmts, keyInsert(cols))
	}
	events[0].identityID = identityID
	stmts = append(stmts, s.trail(ctx, now, req.WorkspaceID, events)...)
	_, err = s.execOneTrip(ctx, statement{}, stmts...)
	if !seen && identityID != "" && IsDuplicateKey(err) {
		stmts = append([]statement{keyInsertOwnedByExternalID(cols, req.WorkspaceID, req.ExternalID), requireRowWritten},
			s.keyCreatedTrail(ctx, now, req.WorkspaceID, keyID)...)
		identityID, err = s.execOneTrip(ctx, statement{`SELECT identity_id FROM keystore_keys WHERE id = ?`, []any{keyID}}, stmts...)
	}
	switch {
	case errors.Is(err, errNoOneTrip), isNoRowWritten(err):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return identityID, req.ExternalID == "" || identityID != "", nil
}

// newKeyRow returns the key row that CreateKey (or an import) writes for
// req: every column but deleted_at, the owner's unset. permissions and roles
// are req's, sorted and unique; meta is req.Meta encoded.
func newKeyRow(req *CreateKeyRequest, keyID, start string, hash []byte, meta any, permissions, roles []string, now time.Time) columns {
	return slices.Concat(columns{
		{"id", keyID}, {"workspace_id", req.WorkspaceID}, {"key_space_id", req.KeySpaceID},
		{"hash", hash}, {"start", start}, {"name", nullString(req.Name)},
		{"meta", meta}, {"expires", nullableUTC(req.Expires)}, {"enabled", !req.Disabled},
		{"permissions", jsonList(permissions)}, {"roles", jsonList(roles)},
		{"ratelimits", ratelimitsValue(req.Ratelimits)}, {"created_at", utc(now)}, {"updated_at", utc(now)},
	}, ownerCopy(nil), creditColumns(req.Credits, now))
}

// insertKey inserts one key row.
func insertKey(ctx context.Context, tx *sqlx.Tx, cols columns) error {
	insert := keyInsert(cols)
	if _, err := tx.ExecContext(ctx, insert.query, insert.args...); err != nil {
		return fmt.Errorf("keystore: insert key: %w", err)
	}
	return nil
}

// keyInsert is the INSERT of one key row.
func keyInsert(cols columns) statement {
	return statement{`INSERT INTO keystore_keys (` + cols.names() + `) VALUES (` + placeholders(len(cols)) + `)`, cols.values()}
}

// creditColumns returns the columns of c (nil: unlimited): remaining and
// the refill's.
func creditColumns(c *Credits, now time.Time) columns {
	cols := columns{{"remaining", nil}, {"refill_interval", nil}, {"refill_amount", nil},
		{"refill_day", nil}, {"refilled_at", nil}}
	if c == nil {
		return cols
	}
	cols[0].value = c.Remaining
	if r := c.Refill; r != nil {
		var day any
		if r.Interval == RefillMonthly {
			day = r.Day
		}
		cols[1].value, cols[2].value, cols[3].value, cols[4].value = string(r.Interval), r.Amount, day, utc(now)
	}
	return cols
}

// ownerCopy returns a key's owner columns (its identity_id and its copies
// of the owner's external id, meta and ratelimits) for the identity r
// (found by this package's write path, or created: no meta or ratelimits
// yet), or for no owner when r is nil.
func ownerCopy(r *identityRow) columns {
	if r == nil {
		return columns{{"identity_id", nil}, {"owner_external_id", nil}, {"owner_meta", nil}, {"owner_ratelimits", nil}}
	}
	return columns{{"identity_id", r.ID}, {"owner_external_id", r.ExternalID},
		{"owner_meta", r.rawMeta}, {"owner_ratelimits", r.rawRatelimits}}
}

// ownerSource is the column of keystore_identities that each owner column
// copies.
var ownerSource = map[string]string{"identity_id": "id", "owner_external_id": "external_id",
	"owner_meta": "meta", "owner_ratelimits": "ratelimits"}

// insertOwnedKey inserts the key row cols (its owner columns unset) owned
// by the live identity of externalID, creating the identity when there is
// none, and returns the identity.
//
// It is ensureIdentity with the read folded into the key's INSERT ...
// SELECT, which saves the statement of the read and copies the owner's
// external id, meta and ratelimits onto the key as it reads them:
//   - an identity the Store has linked a key to before (s.hints): the INSERT
//     reads it by its id, one statement in all. If it is gone, the INSERT
//     inserts nothing and the steps below follow.
//   - otherwise the identity's INSERT goes first: a new identity costs one
//     statement and the key's INSERT one more. If the identity exists
//     (1062), the key's INSERT reads it and returns its id with RETURNING
//     (MariaDB 10.5+). A server without RETURNING (MySQL, Vitess) answers
//     with a syntax error, which rolls back only that statement; the Store
//     then reads the identity first.
//
// The INSERT ... SELECT reads the identity row under a shared lock, so the
// copies are those of the committed identity, and an UpdateIdentity or
// DeleteIdentity that rewrites its keys' copies waits for this key.
func (s *Store) insertOwnedKey(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, externalID string, cols columns) (identityRow, error) {
	found := identityRow{WorkspaceID: workspaceID, ExternalID: externalID}
	id, seen := s.hints.get(workspaceID, externalID)
	if seen {
		inserted, err := insertKeyOwnedByID(ctx, tx, cols, id)
		if err != nil || inserted {
			found.ID = id
			return found, err
		}
		s.hints.forget(workspaceID, externalID)
	}
	// A plain read of the id first when the hint was stale or the server
	// has no RETURNING:
	//   - stale: the identity is more likely re-created than not, and this
	//     read takes none of the locks that the INSERT below takes on the
	//     index entries deleted identities left behind (those deadlocked
	//     with DeleteIdentity's UPDATE of the same entries, measured in
	//     TestConcurrentDeleteAndRecreateIdentity);
	//   - no RETURNING: an existing owner then costs this read and the
	//     key's INSERT, as the seed's find-then-insert does, instead of a
	//     failed INSERT and a read; a new one costs the read more.
	// If the identity is deleted after the read, the INSERT ... SELECT by
	// id inserts nothing and the identity's INSERT follows.
	if seen || s.noReturning.Load() {
		err := tx.GetContext(ctx, &id, selectIdentityID, workspaceID, externalID)
		if err == nil {
			if inserted, err := insertKeyOwnedByID(ctx, tx, cols, id); err != nil || inserted {
				found.ID = id
				return found, err
			}
		} else if !errors.Is(err, sql.ErrNoRows) {
			return found, fmt.Errorf("keystore: find identity: %w", err)
		}
	}
	created, err := insertIdentity(ctx, tx, now, workspaceID, externalID)
	if err == nil {
		cols.set(ownerCopy(&created))
		return created, insertKey(ctx, tx, cols)
	}
	if !IsDuplicateKey(err) {
		return found, err
	}
	if !s.noReturning.Load() {
		insert := keyInsertOwnedByExternalID(cols, workspaceID, externalID)
		err := tx.QueryRowxContext(ctx, insert.query+` RETURNING identity_id`, insert.args...).Scan(&found.ID)
		switch {
		case err == nil:
			return found, nil
		case errors.Is(err, sql.ErrNoRows):
			return found, fmt.Errorf("keystore: identity deleted after a duplicate: %w", errConcurrentChange)
		case !isParseError(err):
			return found, fmt.Errorf("keystore: insert key: %w", err)
		}
		s.noReturning.Store(true)
	}
	if found, err = readIdentityAfterDuplicate(ctx, tx, workspaceID, externalID); err != nil {
		return found, err
	}
	cols.set(ownerCopy(&found))
	return found, insertKey(ctx, tx, cols)
}

// insertKeyOwnedByID inserts the key row owned by identity id if that
// identity is live, and reports whether it was.
func insertKeyOwnedByID(ctx context.Context, tx *sqlx.Tx, cols columns, id string) (bool, error) {
	insert := keyInsertOwnedByID(cols, id)
	res, err := tx.ExecContext(ctx, insert.query, insert.args...)
	if err != nil {
		return false, fmt.Errorf("keystore: insert key: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// keyInsertOwnedBy inserts the key row cols with its owner columns read
// from the identity row that where (a WHERE clause over keystore_identities,
// with its arguments) finds, under a shared lock; nothing when it finds none.
func keyInsertOwnedBy(cols columns, where string, whereArgs ...any) statement {
	selects := make([]string, len(cols))
	args := make([]any, 0, len(cols)+len(whereArgs))
	for i, c := range cols {
		if source, ok := ownerSource[c.name]; ok {
			selects[i] = source
			continue
		}
		selects[i] = "?"
		args = append(args, c.value)
	}
	return statement{`INSERT INTO keystore_keys (` + cols.names() + `) SELECT ` + strings.Join(selects, ", ") +
		` FROM keystore_identities WHERE ` + where + ` LOCK IN SHARE MODE`, append(args, whereArgs...)}
}

// keyInsertOwnedByID inserts the key row cols owned by identity id, if that
// one is live.
func keyInsertOwnedByID(cols columns, id string) statement {
	return keyInsertOwnedBy(cols, `id = ? AND live = 1`, id)
}

// keyInsertOwnedByExternalID inserts the key row cols owned by the live
// identity of externalID, if there is one.
func keyInsertOwnedByExternalID(cols columns, workspaceID, externalID string) statement {
	return keyInsertOwnedBy(cols, `workspace_id = ? AND external_id = ? AND live = 1`, workspaceID, externalID)
}

// UpdateKey changes the Present fields of req and returns the key as
// committed, including what other transactions committed before it.
// Concurrent updates of one key apply one after the other (the key's row
// lock). Setting ExternalID links the found-or-created identity with the
// same race safety as CreateKey, and the Store's calls for an owner it has
// not seen wait for the first of them in the same way.
//
// Errors: ErrInvalidInput when req is invalid; ErrNotFound when the key does
// not exist, was deleted, belongs to another workspace, or a role does not
// exist. In those cases nothing is written. ctx ending while the call waits
// for the Store's own creation of the owner: ctx.Err(), wrapped. Otherwise
// the errors of [WithRetryTx].
func (s *Store) UpdateKey(ctx context.Context, req UpdateKeyRequest) (Key, error) {
	now := s.clock()
	if err := req.validate(now); err != nil {
		return Key{}, err
	}
	update, err := keyUpdate(req, now)
	if err != nil {
		return Key{}, err
	}
	roles := sortedUnique(valueOrZero(req.Roles))
	deltas := linkDeltas{addPermissions: sortedUnique(req.AddPermissions), removePermissions: sortedUnique(req.RemovePermissions),
		addRoles: sortedUnique(req.AddRoles), removeRoles: sortedUnique(req.RemoveRoles)}
	ext, linking := req.ExternalID.Value()
	var release func() // non-nil while this call holds the Store's claim on the owner
	if linking {
		if release, err = s.hints.claim(ctx, req.WorkspaceID, ext); err != nil {
			return Key{}, err
		}
		if release != nil {
			defer release()
		}
	}
	var owner string // the identity linked, once committed
	key, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (Key, error) {
		// Roles the key is to hold are share-locked before the key row:
		// CreateRole and DeleteRole lock a role, then the keys that hold
		// it, and taking the locks in the other order deadlocked with them
		// (TestUpdateKeyRolesRacingCreateRole).
		found, err := lockRoles(ctx, tx, req.WorkspaceID, sortedUnique(slices.Concat(roles, deltas.addRoles, deltas.removeRoles)))
		if err != nil {
			return Key{}, err
		}
		if err := missingRoles(slices.Concat(deltas.addRoles, deltas.removeRoles), found); err != nil {
			return Key{}, err
		}
		// A change of links or credits locks the key row first, so that
		// concurrent changes of one key do not interleave and each sees
		// the last one's result. Any other update is locked by its UPDATE.
		linksChange := req.Permissions.Present() || req.Roles.Present() || !deltas.empty()
		sets, args := update.assignments(), update.values()
		if req.AddCredits != 0 {
			credits, err := lockKeyCredits(ctx, tx, req.WorkspaceID, req.KeyID, req.AddCredits, now)
			if err != nil {
				return Key{}, err
			}
			sets, args = append(sets, credits.assignments()...), append(args, credits.values()...)
		} else if linksChange {
			if err := lockKey(ctx, tx, req.WorkspaceID, req.KeyID); err != nil {
				return Key{}, err
			}
		}
		if linksChange {
			sets = append(sets, setsFromLinks) // computed after the links below change
		}
		events := []audit{{event: EventKeyUpdate, keyID: req.KeyID}}
		if linking {
			identity, err := s.lockOwner(ctx, tx, now, req.WorkspaceID, ext, release)
			if err != nil {
				return Key{}, err
			}
			if identity.created {
				events = append(events, audit{event: EventIdentityCreate, identityID: identity.ID})
			}
			owner = identity.ID
			events[0].identityID = identity.ID
			owner := ownerCopy(&identity)
			sets = append(owner.assignments(), sets...)
			args = append(owner.values(), args...)
		}
		if req.Permissions.Present() {
			slugs := sortedUnique(valueOrZero(req.Permissions))
			if err := ensurePermissions(ctx, tx, now, req.WorkspaceID, slugs); err != nil {
				return Key{}, err
			}
			if err := deleteLinks(ctx, tx, "keystore_key_permissions", req.KeyID); err != nil {
				return Key{}, err
			}
			if err := linkPermissions(ctx, tx, req.KeyID, req.WorkspaceID, slugs); err != nil {
				return Key{}, err
			}
		}
		if req.Roles.Present() {
			if err := deleteLinks(ctx, tx, "keystore_key_roles", req.KeyID); err != nil {
				return Key{}, err
			}
			if err := linkRoles(ctx, tx, req.KeyID, req.WorkspaceID, roles); err != nil {
				return Key{}, err
			}
		}
		if err := deltas.apply(ctx, tx, now, req.WorkspaceID, req.KeyID); err != nil {
			return Key{}, err
		}
		if linksChange {
			if err := liftAggregateLimit(ctx, tx); err != nil {
				return Key{}, err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE keystore_keys k SET `+strings.Join(sets, ", ")+
			` WHERE k.id = ? AND k.workspace_id = ? AND k.deleted_at IS NULL`, append(args, req.KeyID, req.WorkspaceID)...)
		if err != nil {
			return Key{}, fmt.Errorf("keystore: update key: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			// Missing, or unchanged because a concurrent update set the
			// same updated_at to the microsecond: the lock tells which.
			if err := lockKey(ctx, tx, req.WorkspaceID, req.KeyID); err != nil {
				return Key{}, err
			}
		}
		if err := s.writeTrail(ctx, tx, now, req.WorkspaceID, events...); err != nil {
			return Key{}, err
		}
		return getKey(ctx, tx, req.WorkspaceID, req.KeyID, now)
	})
	if err == nil && owner != "" {
		s.hints.add(req.WorkspaceID, ext, owner)
	}
	return key, err
}

// lockKeyCredits takes the exclusive lock on a live key of workspaceID and
// returns the columns that add delta to its credits as they stand at now
// (a due refill applied first; the balance stays within 0..MaxInt64). It
// returns an error matching ErrNotFound for a missing key and
// ErrInvalidInput naming AddCredits for a key without credits.
func lockKeyCredits(ctx context.Context, tx *sqlx.Tx, workspaceID, keyID string, delta int64, now time.Time) (columns, error) {
	var row keyRow
	err := tx.GetContext(ctx, &row, `SELECT remaining, refill_interval, refill_amount, refill_day, refilled_at
		FROM keystore_keys WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL FOR UPDATE`, keyID, workspaceID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("keystore: key %q: %w", keyID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: lock key: %w", err)
	}
	if !row.Remaining.Valid {
		return nil, invalid("AddCredits", "the key has no credits (it is unlimited); set Credits instead")
	}
	state := row.state()
	balance := state.balance(now)
	switch {
	case delta > 0 && balance > math.MaxInt64-delta:
		balance = math.MaxInt64
	case delta < 0 && balance+delta < 0: // balance >= 0: no overflow
		balance = 0
	default:
		balance += delta
	}
	cols := columns{{"remaining", balance}}
	if start := state.periodStart(now); state.interval != "" && state.refilledAt.Before(start) {
		cols = append(cols, column{"refilled_at", utc(start)}) // the due refill, applied
	}
	return cols, nil
}

// lockKey takes the exclusive lock on a live key of workspaceID, or returns
// an error matching ErrNotFound.
func lockKey(ctx context.Context, tx *sqlx.Tx, workspaceID, keyID string) error {
	var one int
	err := tx.GetContext(ctx, &one, `SELECT 1 FROM keystore_keys
		WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL FOR UPDATE`, keyID, workspaceID)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("keystore: key %q: %w", keyID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("keystore: lock key: %w", err)
	}
	return nil
}

// keyUpdate returns the columns the scalar fields of req change (the owner
// excluded: it needs the transaction).
func keyUpdate(req UpdateKeyRequest, now time.Time) (columns, error) {
	u := columns{{"updated_at", utc(now)}}
	if req.Name.Present() {
		u = append(u, column{"name", nullString(valueOrZero(req.Name))})
	}
	if req.ExternalID.IsNull() {
		u = append(u, ownerCopy(nil)...)
	}
	if req.Meta.Present() {
		meta, err := metaValue(valueOrZero(req.Meta))
		if err != nil {
			return u, err
		}
		u = append(u, column{"meta", meta})
	}
	if req.Expires.Present() {
		var expires any
		if t, ok := req.Expires.Value(); ok {
			expires = utc(t)
		}
		u = append(u, column{"expires", expires})
	}
	if req.Credits.Present() {
		var credits *Credits
		if c, ok := req.Credits.Value(); ok {
			credits = &c
		}
		u = append(u, creditColumns(credits, now)...)
	}
	if enabled, ok := req.Enabled.Value(); ok {
		u = append(u, column{"enabled", enabled})
	}
	if req.Ratelimits.Present() {
		u = append(u, column{"ratelimits", ratelimitsValue(valueOrZero(req.Ratelimits))})
	}
	return u, nil
}

// deleteLinks removes every row of a link table for keyID. table is one of
// the two link tables, never user input.
func deleteLinks(ctx context.Context, tx *sqlx.Tx, table, keyID string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE key_id = ?`, keyID); err != nil {
		return fmt.Errorf("keystore: delete from %s: %w", table, err)
	}
	return nil
}

// DeleteKey soft-deletes a key: the row stays (for the audit trail) with its
// deletion time, and from then on GetKey, UpdateKey and ListKeys do not find
// it and VerifyKey answers CodeNotFound. Deleting a deleted key again does
// nothing and returns nil, without a second audit event.
//
// Errors: ErrInvalidInput for an invalid workspaceID or keyID; ErrNotFound
// when the key never existed or belongs to another workspace. Otherwise the
// errors of [WithRetryTx].
func (s *Store) DeleteKey(ctx context.Context, workspaceID, keyID string) error {
	if err := validateID("WorkspaceID", workspaceID, limitIDChars); err != nil {
		return err
	}
	if err := validateRefID("KeyID", keyID); err != nil {
		return err
	}
	now := s.clock()
	_, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		var row struct {
			IdentityID sql.NullString `db:"identity_id"`
			Deleted    bool           `db:"deleted"`
		}
		err := tx.GetContext(ctx, &row, `SELECT identity_id, deleted_at IS NOT NULL AS deleted FROM keystore_keys
			WHERE id = ? AND workspace_id = ? FOR UPDATE`, keyID, workspaceID)
		if errors.Is(err, sql.ErrNoRows) {
			return struct{}{}, fmt.Errorf("keystore: key %q: %w", keyID, ErrNotFound)
		}
		if err != nil {
			return struct{}{}, fmt.Errorf("keystore: lock key: %w", err)
		}
		if row.Deleted {
			return struct{}{}, nil // deleted before: nothing changes, no event
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keystore_keys SET deleted_at = ?, updated_at = ? WHERE id = ?`,
			utc(now), utc(now), keyID); err != nil {
			return struct{}{}, fmt.Errorf("keystore: delete key: %w", err)
		}
		return struct{}{}, s.writeTrail(ctx, tx, now, workspaceID,
			audit{event: EventKeyDelete, keyID: keyID, identityID: row.IdentityID.String})
	})
	return err
}

// RerollKey gives the key req.KeyID a new secret and returns its plaintext,
// with the same prefix (read from the key's Start). The key keeps its id and
// everything else: key space, owner, name, meta, expiry, permissions, roles,
// ratelimits and its one credit balance. For req.Grace the old plaintext
// still verifies, as the same key: the old and the new secret spend the same
// credits, so together they never admit more than the key alone would.
// After the grace the old plaintext is CodeNotFound; with no grace it is at
// once. Each reroll writes a key.reroll audit event.
//
// Errors: ErrInvalidInput for a malformed request (a negative Grace);
// ErrNotFound when the key does not exist, was deleted or belongs to
// another workspace. Otherwise the errors of [WithRetryTx].
func (s *Store) RerollKey(ctx context.Context, req RerollKeyRequest) (CreatedKey, error) {
	if err := validateID("WorkspaceID", req.WorkspaceID, limitIDChars); err != nil {
		return CreatedKey{}, err
	}
	if err := validateRefID("KeyID", req.KeyID); err != nil {
		return CreatedKey{}, err
	}
	if req.Grace < 0 {
		return CreatedKey{}, invalid("Grace", "must not be negative")
	}
	if err := validateByteLength("ByteLength", req.ByteLength); err != nil {
		return CreatedKey{}, err
	}
	now := s.clock()
	var rerolled []byte // the new hash
	created, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (CreatedKey, error) {
		var old struct {
			Start      string         `db:"start"`
			Hash       []byte         `db:"hash"`
			IdentityID sql.NullString `db:"identity_id"`
		}
		err := tx.GetContext(ctx, &old, `SELECT start, hash, IF(owner_external_id IS NULL, NULL, identity_id) AS identity_id
			FROM keystore_keys WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL FOR UPDATE`, req.KeyID, req.WorkspaceID)
		if errors.Is(err, sql.ErrNoRows) {
			return CreatedKey{}, fmt.Errorf("keystore: key %q: %w", req.KeyID, ErrNotFound)
		}
		if err != nil {
			return CreatedKey{}, fmt.Errorf("keystore: lock key: %w", err)
		}
		plaintext, start, hash := newSecret(prefixOf(old.Start), req.ByteLength)
		if err := exec(ctx, tx, "forget expired old hashes", `DELETE FROM keystore_old_hashes
			WHERE key_id = ? AND expires_at <= ?`, req.KeyID, utc(now)); err != nil {
			return CreatedKey{}, err
		}
		if req.Grace > 0 {
			if err := exec(ctx, tx, "keep the old hash", `INSERT INTO keystore_old_hashes (hash, key_id, expires_at)
				VALUES (?, ?, ?)`, old.Hash, req.KeyID, utc(now.Add(req.Grace))); err != nil {
				return CreatedKey{}, err
			}
		}
		if err := exec(ctx, tx, "reroll key", `UPDATE keystore_keys SET hash = ?, start = ?, updated_at = ? WHERE id = ?`,
			hash, start, utc(now), req.KeyID); err != nil {
			return CreatedKey{}, err
		}
		err = s.writeTrail(ctx, tx, now, req.WorkspaceID,
			audit{event: EventKeyReroll, keyID: req.KeyID, identityID: old.IdentityID.String})
		rerolled = hash
		return CreatedKey{KeyID: req.KeyID, Key: plaintext, IdentityID: old.IdentityID.String}, err
	})
	if err == nil {
		s.createdHere(rerolled)
	}
	return created, withKeyID(err, req.KeyID)
}

// prefixOf returns the prefix of a key whose Start is start: newSecret's
// start is the prefix, "_" and 4 characters, or the 4 characters alone. A
// start that is not of that shape (an imported key's) gives no prefix.
func prefixOf(start string) string {
	if len(start) <= 4 {
		return ""
	}
	prefix, ok := strings.CutSuffix(start[:len(start)-4], "_")
	if !ok || validatePrefix("Prefix", prefix) != nil {
		return ""
	}
	return prefix
}

// GetKey returns the key keyID of workspaceID, read in one statement from
// the replica if the Store has one (see [WithReplica]), else the primary. It returns an error matching ErrNotFound when the key does not
// exist, was deleted, or belongs to another workspace, and ErrInvalidInput
// when workspaceID or keyID is malformed (keyID is not an id keystore made).
func (s *Store) GetKey(ctx context.Context, workspaceID, keyID string) (Key, error) {
	if err := validateID("WorkspaceID", workspaceID, limitIDChars); err != nil {
		return Key{}, err
	}
	if err := validateRefID("KeyID", keyID); err != nil {
		return Key{}, err
	}
	var k Key
	err := s.read(ctx, func(ctx context.Context, db *sqlx.DB) (err error) {
		k, err = getKey(ctx, db, workspaceID, keyID, s.clock())
		return err
	})
	return k, err
}

// keyRow is one row of selectKey.
type keyRow struct {
	ID             string                      `db:"id"`
	WorkspaceID    string                      `db:"workspace_id"`
	KeySpaceID     string                      `db:"key_space_id"`
	Start          string                      `db:"start"`
	Name           sql.NullString              `db:"name"`
	IdentityID     sql.NullString              `db:"identity_id"`
	ExternalID     sql.NullString              `db:"external_id"`
	Meta           jsonColumn[map[string]any]  `db:"meta"`
	Expires        dbTime                      `db:"expires"`
	Enabled        bool                        `db:"enabled"`
	Remaining      sql.NullInt64               `db:"remaining"`
	RefillInterval sql.NullString              `db:"refill_interval"`
	RefillAmount   sql.NullInt64               `db:"refill_amount"`
	RefillDay      sql.NullInt64               `db:"refill_day"`
	RefilledAt     dbTime                      `db:"refilled_at"`
	CreatedAt      dbTime                      `db:"created_at"`
	UpdatedAt      dbTime                      `db:"updated_at"`
	Permissions    jsonColumn[[]string]        `db:"permissions"`
	Roles          jsonColumn[[]string]        `db:"roles"`
	Ratelimits     jsonColumn[[]ratelimitJSON] `db:"ratelimits"`
}

// selectKeyFrom is the SELECT list and FROM clause of every key read: the
// key with its sets and its live owner's copies (both kept on its row, see
// sets.go and ownerCopy), so a key or a page of keys is one index lookup and
// no join. Callers append a WHERE clause over k.
const selectKeyFrom = `SELECT k.id, k.workspace_id, k.key_space_id, k.start, k.name,
	IF(k.owner_external_id IS NULL, NULL, k.identity_id) AS identity_id, k.owner_external_id AS external_id,
	k.meta, k.expires, k.enabled, k.remaining, k.refill_interval,
	k.refill_amount, k.refill_day, k.refilled_at, k.created_at, k.updated_at, k.permissions, k.roles, k.ratelimits
FROM keystore_keys k `

const selectKey = selectKeyFrom + `WHERE k.id = ? AND k.workspace_id = ? AND k.deleted_at IS NULL`

// getKey reads a live key, its credits as they stand at now (see
// [keyRow.key]).
func getKey(ctx context.Context, q sqlx.QueryerContext, workspaceID, keyID string, now time.Time) (Key, error) {
	var row keyRow
	err := sqlx.GetContext(ctx, q, &row, selectKey, keyID, workspaceID)
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, fmt.Errorf("keystore: key %q: %w", keyID, ErrNotFound)
	}
	if err != nil {
		return Key{}, fmt.Errorf("keystore: get key: %w", err)
	}
	return row.key(now), nil
}

// key returns the key the row holds. Its Credits.Remaining is the balance
// at now, with a refill that is due counted, as VerifyKey counts it: a due
// refill is written only by the next spend.
func (r keyRow) key(now time.Time) Key {
	// Sets are sorted (and permissions deduplicated) here rather than in
	// SQL: MySQL's JSON_ARRAYAGG has neither ORDER BY nor DISTINCT.
	k := Key{
		ID: r.ID, WorkspaceID: r.WorkspaceID, KeySpaceID: r.KeySpaceID, Start: r.Start,
		Name: r.Name.String, IdentityID: r.IdentityID.String, ExternalID: r.ExternalID.String,
		Meta: r.Meta.V, Expires: r.Expires.ptr(), Enabled: r.Enabled,
		Permissions: r.Permissions.V, Roles: r.Roles.V,
		CreatedAt: r.CreatedAt.Time, UpdatedAt: r.UpdatedAt.Time,
	}
	slices.Sort(k.Permissions)
	k.Permissions = slices.Compact(k.Permissions)
	if len(k.Permissions) == 0 {
		k.Permissions = nil // no permissions reads back as nil, like other empty sets
	}
	slices.Sort(k.Roles)
	if r.Remaining.Valid {
		k.Credits = &Credits{Remaining: r.state().balance(now)}
		if r.RefillInterval.Valid {
			k.Credits.Refill = &Refill{Interval: RefillInterval(r.RefillInterval.String),
				Amount: r.RefillAmount.Int64, Day: int(r.RefillDay.Int64)}
		}
	}
	k.Ratelimits = ratelimitsFromJSON(r.Ratelimits.V)
	return k
}

// ListKeys returns a page of the live (not deleted) keys of a key space, or,
// when req.ExternalID is set, of the live identity of ExternalID (only those
// in req.KeySpaceID if it is set too), in creation order. Each page is one
// statement, on the replica if the Store has one, walking an index from the
// cursor. No key is
// listed twice; a key committed while a listing is paged may be missed
// (ids are made before commit, so commits are not in id order).
// An ExternalID without a live identity lists no keys.
//
// Errors: ErrInvalidInput for an invalid request (WorkspaceID is required,
// and KeySpaceID unless ExternalID is set; Limit 0..MaxPageSize; Cursor ""
// or a NextCursor).
func (s *Store) ListKeys(ctx context.Context, req ListKeysRequest) (Page[Key], error) {
	limit, err := req.validate()
	if err != nil {
		return Page[Key]{}, err
	}
	where := `WHERE k.workspace_id = ? AND k.deleted_at IS NULL AND k.id > ?`
	args := []any{req.WorkspaceID, req.Cursor}
	if req.ExternalID != "" {
		where += ` AND k.identity_id = (SELECT id FROM keystore_identities
			WHERE workspace_id = ? AND external_id = ? AND live = 1)`
		args = append(args, req.WorkspaceID, req.ExternalID)
	}
	if req.KeySpaceID != "" {
		where += ` AND k.key_space_id = ?`
		args = append(args, req.KeySpaceID)
	}
	var rows []keyRow
	err = s.read(ctx, func(ctx context.Context, db *sqlx.DB) error {
		rows = nil
		return db.SelectContext(ctx, &rows, selectKeyFrom+where+` ORDER BY k.id LIMIT ?`, append(args, limit+1)...)
	})
	if err != nil {
		return Page[Key]{}, fmt.Errorf("keystore: list keys: %w", err)
	}
	keys, now := make([]Key, len(rows)), s.clock()
	for i, r := range rows {
		keys[i] = r.key(now)
	}
	return makePage(keys, limit, func(k Key) string { return k.ID }), nil
}

func (r *ListKeysRequest) validate() (limit int, err error) {
	if err := validateID("WorkspaceID", r.WorkspaceID, limitIDChars); err != nil {
		return 0, err
	}
	if r.ExternalID != "" {
		err = validateID("ExternalID", r.ExternalID, limitIDChars)
	}
	if err == nil && (r.ExternalID == "" || r.KeySpaceID != "") {
		err = validateID("KeySpaceID", r.KeySpaceID, limitIDChars)
	}
	if err == nil {
		err = validateCursor(r.Cursor)
	}
	if err != nil {
		return 0, err
	}
	return pageLimit(r.Limit)
}
