package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// How a racing get-or-create of an identity is won (permissions below use the
// same idea in bulk; roles, created rarely, take an exclusive lock instead:
// see ensureRole). Facts it rests on, for InnoDB at the default REPEATABLE
// READ:
//
//   - An INSERT that collides with a unique key held by an uncommitted
//     transaction waits for it, and fails with 1062 only once it committed.
//     The failed INSERT leaves a shared lock on the winner's row.
//   - A locking read (LOCK IN SHARE MODE) sees the latest committed row, even
//     after the transaction's snapshot was fixed by an earlier plain read.
//   - A locking read of a *missing* row takes a gap lock; two creators that
//     both hold one then deadlock on their INSERTs.
//
// So: a plain read (no lock, no gap lock) and an INSERT, in the order the
// Store guesses is cheaper (see ensureIdentity), and only when the INSERT
// found the identity there, a shared-lock read of it. Losers of a race never
// ask for an exclusive lock on the winner's row, so a burst of creators does
// not deadlock: nobody retries. BenchmarkCreateKey compares this with ON
// DUPLICATE KEY UPDATE (an exclusive lock that serialises every key of a hot
// identity) and with the seed's shapes.
//
// CreateKey folds the read into the key's own INSERT ... SELECT (see
// insertOwnedKey), which saves a statement, copies the owner's external id,
// meta and ratelimits onto the key (so that reads of keys need no join),
// and share-locks the identity row it read: on one server an UpdateIdentity
// or DeleteIdentity, which rewrite those copies on every key of the
// identity under its exclusive lock, waits for the keys being created
// instead of missing them (on a Galera cluster, locks are per node and a
// conflict between nodes aborts one side, which is retried). A key whose
// identity was deleted keeps its identity_id and loses the copies: it reads
// as unowned, exactly the state of the serial order "key created, then
// identity deleted".
//
// On MariaDB, CreateKey sends the same protocol as one or two anonymous
// compound statements (see createKeyOneTrip and onetrip.go): for an owner
// the Store has seen, the key's INSERT ... SELECT by its id, stopped by
// requireRowWritten if it is gone; otherwise the owner's INSERT and the
// key's in one, and when that INSERT finds the owner, the key's INSERT ...
// SELECT under a shared lock in a second. The first one's
// rollback drops the shared lock its failed INSERT took, so the owner can
// be deleted before the second reads it; the second then writes nothing
// and CreateKey runs the transaction above, which finds or creates the
// next owner.

// ensureIdentity returns the live identity of externalID in workspaceID,
// creating it when there is none (then the row has created set). A found
// row has only ID, WorkspaceID and ExternalID.
//
// seen chooses the first statement. For an identity the caller has seen, a
// plain read finds it in one statement, and the INSERT comes only if it
// missed. For one it has not seen, the INSERT comes first and a new identity
// costs one statement instead of two; if the INSERT finds the identity there
// after all (1062), the shared-lock read follows. Either order is the same
// protocol with the same locks, so a wrong guess costs one statement and
// nothing else.
func ensureIdentity(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, externalID string, seen bool) (identityRow, error) {
	if seen {
		found := identityRow{WorkspaceID: workspaceID, ExternalID: externalID}
		err := tx.GetContext(ctx, &found.ID, selectIdentityID, workspaceID, externalID)
		if err == nil {
			return found, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return found, fmt.Errorf("keystore: find identity: %w", err)
		}
	}
	created, err := insertIdentity(ctx, tx, now, workspaceID, externalID)
	if !IsDuplicateKey(err) {
		return created, err
	}
	return readIdentityAfterDuplicate(ctx, tx, workspaceID, externalID)
}

// insertIdentity creates the identity of externalID. It fails with a
// duplicate-key error (1062) when a live one exists, after waiting for a
// racing creator to commit.
func insertIdentity(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, externalID string) (identityRow, error) {
	created, insert := identityInsert(now, workspaceID, externalID)
	if _, err := tx.ExecContext(ctx, insert.query, insert.args...); err != nil {
		return identityRow{}, fmt.Errorf("keystore: create identity: %w", err)
	}
	return created, nil
}

// identityInsert returns a new identity of externalID and the INSERT that
// creates it.
func identityInsert(now time.Time, workspaceID, externalID string) (identityRow, statement) {
	created := identityRow{ID: newID("id"), WorkspaceID: workspaceID, ExternalID: externalID,
		CreatedAt: dbTime{now, true}, UpdatedAt: dbTime{now, true}, created: true}
	return created, statement{`INSERT INTO keystore_identities (id, workspace_id, external_id, live, created_at, updated_at)
		VALUES (?, ?, ?, 1, ?, ?)`, []any{created.ID, workspaceID, externalID, utc(now), utc(now)}}
}

// readIdentityAfterDuplicate reads the identity that insertIdentity found
// there: a racing creator won, or it existed all along; either way it has
// committed. A plain SELECT could read a snapshot that misses it; the
// locking read sees it. It finds nothing only if the identity was deleted
// since: running the transaction again creates it anew. The row has ID,
// WorkspaceID, ExternalID and the owner copies (see ownerCopy).
func readIdentityAfterDuplicate(ctx context.Context, tx *sqlx.Tx, workspaceID, externalID string) (identityRow, error) {
	found := identityRow{WorkspaceID: workspaceID, ExternalID: externalID}
	err := tx.QueryRowxContext(ctx, `SELECT id, meta, ratelimits FROM keystore_identities
		WHERE workspace_id = ? AND external_id = ? AND live = 1 LOCK IN SHARE MODE`, workspaceID, externalID).
		Scan(&found.ID, &found.rawMeta, &found.rawRatelimits)
	if errors.Is(err, sql.ErrNoRows) {
		return found, fmt.Errorf("keystore: identity deleted after a duplicate: %w", errConcurrentChange)
	}
	if err != nil {
		return found, fmt.Errorf("keystore: read identity after duplicate: %w", err)
	}
	return found, nil
}

// lockOwner returns the live identity of externalID in workspaceID with
// the owner copies, share-locked, creating it when there is none (then the
// row has created set), for UpdateKey's link. It makes no plain read, so
// that the snapshot of UpdateKey's final read is taken after it and sees
// what racing transactions committed. An identity the Store has seen is
// read by its id under the lock (one statement); otherwise, or if that one
// is gone, the INSERT goes first and its duplicate path reads under a
// lock. A found identity is handed to the Store's calls waiting on
// release (see identityHints.claim).
func (s *Store) lockOwner(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, externalID string, release func()) (identityRow, error) {
	if id, ok := s.hints.get(workspaceID, externalID); ok {
		found := identityRow{WorkspaceID: workspaceID, ExternalID: externalID}
		err := tx.QueryRowxContext(ctx, `SELECT id, meta, ratelimits FROM keystore_identities
			WHERE id = ? AND live = 1 LOCK IN SHARE MODE`, id).Scan(&found.ID, &found.rawMeta, &found.rawRatelimits)
		if err == nil {
			return found, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return found, fmt.Errorf("keystore: read identity: %w", err)
		}
		s.hints.forget(workspaceID, externalID) // deleted since
	}
	identity, err := ensureIdentity(ctx, tx, now, workspaceID, externalID, false)
	if err == nil && !identity.created {
		s.hints.found(release, workspaceID, externalID, identity.ID)
	}
	return identity, err
}

// selectIdentityID finds the id of a live identity: the first statement of
// every write that names an owner, so it reads nothing else.
const selectIdentityID = `SELECT id FROM keystore_identities WHERE workspace_id = ? AND external_id = ? AND live = 1`

// EnsureIdentity returns the live identity of externalID in workspaceID,
// creating it when there is none. Concurrent callers for one externalID all
// succeed and get the same identity; callers sharing a Store wait for its
// first call to create it, as in [Store.CreateKey]. An identity.create
// audit event is written only when this call created the identity.
//
// Errors: ErrInvalidInput for an invalid workspaceID or externalID;
// ctx.Err(), wrapped, when ctx ends during that wait; otherwise the errors
// of [WithRetryTx].
func (s *Store) EnsureIdentity(ctx context.Context, workspaceID, externalID string) (Identity, error) {
	if err := validateIdentityRef(workspaceID, externalID); err != nil {
		return Identity{}, err
	}
	now := s.clock()
	release, err := s.hints.claim(ctx, workspaceID, externalID)
	if err != nil {
		return Identity{}, err
	}
	if release != nil {
		defer release()
	}
	// READ COMMITTED: the final read must see an identity that a racing
	// transaction committed after this one's first read.
	_, seen := s.hints.get(workspaceID, externalID)
	identity, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (Identity, error) {
		row, err := ensureIdentity(ctx, tx, now, workspaceID, externalID, seen)
		if err != nil {
			return Identity{}, err
		}
		if row.created {
			return row.identity(), s.writeTrail(ctx, tx, now, workspaceID, audit{event: EventIdentityCreate, identityID: row.ID})
		}
		return readIdentityByID(ctx, tx, row.ID)
	}, readCommitted)
	if err == nil {
		s.hints.add(workspaceID, externalID, identity.ID)
	}
	return identity, err
}

func validateIdentityRef(workspaceID, externalID string) error {
	if err := validateID("WorkspaceID", workspaceID, limitIDChars); err != nil {
		return err
	}
	return validateID("ExternalID", externalID, limitIDChars)
}

// UpdateIdentity changes the Present fields of the live identity of
// req.ExternalID and returns it as committed. Meta: Set replaces, Null
// clears. Ratelimits: Set replaces the whole set, Null or Set of an empty
// slice clears it. The identity row is locked first, so concurrent updates
// of one identity apply one after the other. A change of Meta or
// Ratelimits is copied onto every key of the identity in the same
// transaction (one UPDATE; keys carry their owner's, see insertOwnedKey).
//
// UpdateIdentity never creates an identity (use [Store.EnsureIdentity]):
// updating one that does not exist is more likely a caller's mistake than a
// wish to create it.
//
// Errors: ErrInvalidInput when req is invalid; ErrNotFound when there is no
// live identity of req.ExternalID. In both cases nothing is written.
// Otherwise the errors of [WithRetryTx].
func (s *Store) UpdateIdentity(ctx context.Context, req UpdateIdentityRequest) (Identity, error) {
	if err := req.validate(); err != nil {
		return Identity{}, err
	}
	var meta any
	if m, ok := req.Meta.Value(); ok {
		var err error
		if meta, err = metaValue(m); err != nil {
			return Identity{}, err
		}
	}
	now := s.clock()
	// READ COMMITTED: the final read must see what other transactions
	// committed between lockLiveIdentity's plain read and its lock.
	return tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (Identity, error) {
		id, err := lockLiveIdentity(ctx, tx, req.WorkspaceID, req.ExternalID)
		if err != nil {
			return Identity{}, err
		}
		changed, copies := columns{{"updated_at", utc(now)}}, columns{} // the identity's, its keys'
		if req.Meta.Present() {
			changed, copies = append(changed, column{"meta", meta}), append(copies, column{"owner_meta", meta})
		}
		if req.Ratelimits.Present() {
			rl := ratelimitsValue(valueOrZero(req.Ratelimits))
			changed, copies = append(changed, column{"ratelimits", rl}), append(copies, column{"owner_ratelimits", rl})
		}
		if err := exec(ctx, tx, "update identity", `UPDATE keystore_identities SET `+strings.Join(changed.assignments(), ", ")+
			` WHERE id = ?`, append(changed.values(), id)...); err != nil {
			return Identity{}, err
		}
		// The copies on its keys, under the identity's exclusive lock: a
		// key being created for it holds a shared one and is rewritten
		// here once it has committed (see insertOwnedKey).
		if len(copies) > 0 {
			if err := exec(ctx, tx, "update keys of identity", `UPDATE keystore_keys SET `+strings.Join(copies.assignments(), ", ")+
				` WHERE identity_id = ?`, append(copies.values(), id)...); err != nil {
				return Identity{}, err
			}
		}
		if err := s.writeTrail(ctx, tx, now, req.WorkspaceID, audit{event: EventIdentityUpdate, identityID: id}); err != nil {
			return Identity{}, err
		}
		return readIdentityByID(ctx, tx, id)
	}, readCommitted)
}

func (r *UpdateIdentityRequest) validate() error {
	if err := validateIdentityRef(r.WorkspaceID, r.ExternalID); err != nil {
		return err
	}
	if v, ok := r.Meta.Value(); ok {
		if err := validateMeta("Meta", v); err != nil {
			return err
		}
	}
	if v, ok := r.Ratelimits.Value(); ok {
		return validateRatelimits("Ratelimits", v)
	}
	return nil
}

// DeleteIdentity soft-deletes the live identity of externalID: the row stays
// (for the audit trail), but no longer counts as the identity of externalID,
// so the next CreateKey or EnsureIdentity for it creates a new identity;
// this can repeat any number of times. Its ratelimits are deleted in the
// same transaction. Its keys stay valid and lose their owner: every read
// (GetKey, ListKeys, VerifyKey) reports them with IdentityID and ExternalID
// "". Their rows keep the old identity id, so the audit trail can still tell
// whose they were; the copies of the owner they carry are cleared in the
// same transaction (one UPDATE). One identity.delete event is written.
//
// A CreateKey for externalID that overlaps the delete either links the old
// identity (and its key is unowned, as if it was created just before the
// delete) or the next one; it never fails because of the delete.
//
// Errors: ErrInvalidInput for an invalid workspaceID or externalID;
// ErrNotFound when there is no live identity of externalID. Otherwise the
// errors of [WithRetryTx].
func (s *Store) DeleteIdentity(ctx context.Context, workspaceID, externalID string) error {
	if err := validateIdentityRef(workspaceID, externalID); err != nil {
		return err
	}
	now := s.clock()
	_, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		id, err := lockLiveIdentity(ctx, tx, workspaceID, externalID)
		if err != nil {
			return struct{}{}, err
		}
		err = exec(ctx, tx, "delete identity", `UPDATE keystore_identities
			SET live = NULL, ratelimits = NULL, deleted_at = ?, updated_at = ? WHERE id = ?`, utc(now), utc(now), id)
		if err != nil {
			return struct{}{}, err
		}
		// Its keys keep identity_id (for the audit trail) and lose the
		// copies that make them read as owned.
		err = exec(ctx, tx, "unlink keys of identity", `UPDATE keystore_keys
			SET owner_external_id = NULL, owner_meta = NULL, owner_ratelimits = NULL WHERE identity_id = ?`, id)
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.writeTrail(ctx, tx, now, workspaceID, audit{event: EventIdentityDelete, identityID: id})
	})
	return err
}

// lockLiveIdentity takes the exclusive lock on the live identity of
// externalID and returns its id, or an error matching ErrNotFound.
//
// It finds the id with a plain read and then locks the row by primary key.
// A locking read through the unique (workspace_id, external_id, live) index
// instead would take next-key locks on every entry that recently deleted
// identities of externalID left there (delete-marked until purged) and on
// the gaps between them, which deadlocks with the inserts of CreateKey and
// of other deletes. If the identity was deleted between the two reads, the
// answer is ErrNotFound: at that moment it had no live identity.
func lockLiveIdentity(ctx context.Context, tx *sqlx.Tx, workspaceID, externalID string) (string, error) {
	var id string
	err := tx.GetContext(ctx, &id, `SELECT id FROM keystore_identities
		WHERE workspace_id = ? AND external_id = ? AND live = 1`, workspaceID, externalID)
	if err == nil {
		err = tx.GetContext(ctx, &id, `SELECT id FROM keystore_identities WHERE id = ? AND live = 1 FOR UPDATE`, id)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("keystore: identity %q: %w", externalID, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("keystore: lock identity: %w", err)
	}
	return id, nil
}

// FindIdentity returns the live identity of externalID in workspaceID, with
// its Meta and Ratelimits, read in one statement from the replica if the
// Store has one, else the primary.
//
// Errors: ErrInvalidInput for an invalid workspaceID or externalID;
// ErrNotFound when there is no live identity of externalID.
func (s *Store) FindIdentity(ctx context.Context, workspaceID, externalID string) (Identity, error) {
	if err := validateIdentityRef(workspaceID, externalID); err != nil {
		return Identity{}, err
	}
	var row identityRow
	err := s.read(ctx, func(ctx context.Context, db *sqlx.DB) error {
		row = identityRow{}
		return db.GetContext(ctx, &row, selectIdentityFrom+`WHERE i.workspace_id = ? AND i.external_id = ? AND i.live = 1`,
			workspaceID, externalID)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Identity{}, fmt.Errorf("keystore: identity %q: %w", externalID, ErrNotFound)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("keystore: find identity: %w", err)
	}
	return row.identity(), nil
}

// readIdentityByID reads a live identity with its sets in the caller's
// transaction. It returns errIdentityGone when the identity is not live:
// found earlier in the transaction, it was deleted since.
func readIdentityByID(ctx context.Context, tx *sqlx.Tx, id string) (Identity, error) {
	var row identityRow
	err := tx.GetContext(ctx, &row, selectIdentityFrom+`WHERE i.id = ? AND i.live = 1`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return Identity{}, errIdentityGone
	}
	if err != nil {
		return Identity{}, fmt.Errorf("keystore: read identity: %w", err)
	}
	return row.identity(), nil
}

// selectIdentityFrom is the SELECT list and FROM clause of every full read of
// identities. Callers append a WHERE clause over i.
const selectIdentityFrom = `SELECT i.id, i.workspace_id, i.external_id, i.meta, i.created_at, i.updated_at, i.ratelimits
FROM keystore_identities i `

// identityRow is an identity read by selectIdentityFrom, or found by the
// write path's ensureIdentity (then only ID, WorkspaceID and ExternalID are
// set).
type identityRow struct {
	ID          string                      `db:"id"`
	WorkspaceID string                      `db:"workspace_id"`
	ExternalID  string                      `db:"external_id"`
	Meta        jsonColumn[map[string]any]  `db:"meta"`
	CreatedAt   dbTime                      `db:"created_at"`
	UpdatedAt   dbTime                      `db:"updated_at"`
	Ratelimits  jsonColumn[[]ratelimitJSON] `db:"ratelimits"`
	created     bool
	// rawMeta and rawRatelimits are meta and ratelimits as stored, for the
	// owner copies of keys (see ownerCopy); set by the write path only.
	rawMeta, rawRatelimits sql.NullString
}

func (r identityRow) identity() Identity {
	return Identity{ID: r.ID, WorkspaceID: r.WorkspaceID, ExternalID: r.ExternalID, Meta: r.Meta.V,
		Ratelimits: ratelimitsFromJSON(r.Ratelimits.V), CreatedAt: r.CreatedAt.Time, UpdatedAt: r.UpdatedAt.Time}
}

// ListIdentities returns a page of the live identities of a workspace, with
// their Meta and Ratelimits, in creation order, one statement per page (on
// the replica if the Store has one).
//
// Errors: ErrInvalidInput for an invalid request (WorkspaceID is required;
// Limit 0..MaxPageSize; Cursor "" or a NextCursor).
func (s *Store) ListIdentities(ctx context.Context, req ListIdentitiesRequest) (Page[Identity], error) {
	err := validateID("WorkspaceID", req.WorkspaceID, limitIDChars)
	if err == nil {
		err = validateCursor(req.Cursor)
	}
	limit, limitErr := pageLimit(req.Limit)
	if err == nil {
		err = limitErr
	}
	if err != nil {
		return Page[Identity]{}, err
	}
	var rows []identityRow
	err = s.read(ctx, func(ctx context.Context, db *sqlx.DB) error {
		rows = nil
		return db.SelectContext(ctx, &rows, selectIdentityFrom+`WHERE i.workspace_id = ? AND i.live = 1 AND i.id > ?
			ORDER BY i.id LIMIT ?`, req.WorkspaceID, req.Cursor, limit+1)
	})
	if err != nil {
		return Page[Identity]{}, fmt.Errorf("keystore: list identities: %w", err)
	}
	identities := make([]Identity, len(rows))
	for i, r := range rows {
		identities[i] = r.identity()
	}
	return makePage(identities, limit, func(i Identity) string { return i.ID }), nil
}
