package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
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

// ownerCopy returns the values of a key's owner columns (identity_id,
// owner_external_id, owner_meta, owner_ratelimits) for the identity r
// (found by this package's write path, or created: no meta or ratelimits
// yet), or for no owner when r is nil.
func ownerCopy(r *identityRow) []any {
	if r == nil {
		return []any{nil, nil, nil, nil}
	}
	return []any{r.ID, r.ExternalID, r.rawMeta, r.rawRatelimits}
}

// insertOwnedKey inserts the key row (cols in keyColumns order, owner
// columns left unset) owned by the live identity of externalID, creating
// the identity when there is none, and returns the identity.
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
func (s *Store) insertOwnedKey(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, externalID string, cols []any) (identityRow, error) {
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
		copy(cols[keyOwnerColumn:], ownerCopy(&created))
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
	copy(cols[keyOwnerColumn:], ownerCopy(&found))
	return found, insertKey(ctx, tx, cols)
}

// insertKeyOwnedByID inserts the key row owned by identity id if that
// identity is live, and reports whether it was.
func insertKeyOwnedByID(ctx context.Context, tx *sqlx.Tx, cols []any, id string) (bool, error) {
	insert := keyInsertOwnedByID(cols, id)
	res, err := tx.ExecContext(ctx, insert.query, insert.args...)
	if err != nil {
		return false, fmt.Errorf("keystore: insert key: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// keyOwnerColumn is the position of identity_id in keyColumns; the owner
// copies follow it.
const keyOwnerColumn = 6

// ownerColumnNames are a key's owner columns, in keyColumns order.
var ownerColumnNames = []string{"identity_id", "owner_external_id", "owner_meta", "owner_ratelimits"}

// ownerColumns are what insertKeyOwnedBy selects from keystore_identities
// for identity_id and the owner copies.
var ownerColumns = []string{"id", "external_id", "meta", "ratelimits"}

// insertKeyOwnedBy inserts a key row whose owner columns are read from the
// identity row that the WHERE clause appended to it finds; its arguments
// are withoutOwner(cols), then the WHERE clause's.
var insertKeyOwnedBy = func() string {
	marks := strings.Split(placeholders(strings.Count(keyColumns, ",")+1), ", ")
	copy(marks[keyOwnerColumn:], ownerColumns)
	return `INSERT INTO keystore_keys (` + keyColumns + `) SELECT ` + strings.Join(marks, ", ") + ` FROM keystore_identities WHERE `
}()

// keyInsertOwnedByID inserts the key row cols (owner columns unset) owned
// by identity id, if that one is live.
func keyInsertOwnedByID(cols []any, id string) statement {
	return statement{insertKeyOwnedBy + `id = ? AND live = 1 LOCK IN SHARE MODE`, append(withoutOwner(cols), id)}
}

// keyInsertOwnedByExternalID inserts the key row cols (owner columns unset)
// owned by the live identity of externalID, if there is one.
func keyInsertOwnedByExternalID(cols []any, workspaceID, externalID string) statement {
	return statement{insertKeyOwnedBy + `workspace_id = ? AND external_id = ? AND live = 1 LOCK IN SHARE MODE`,
		append(withoutOwner(cols), workspaceID, externalID)}
}

func withoutOwner(cols []any) []any {
	return append(slices.Clone(cols[:keyOwnerColumn]), cols[keyOwnerColumn+len(ownerColumns):]...)
}

// selectIdentityID finds the id of a live identity: the first statement of
// every write that names an owner, so it reads nothing else.
const selectIdentityID = `SELECT id FROM keystore_identities WHERE workspace_id = ? AND external_id = ? AND live = 1`

// ensurePermissions makes a permission exist for every slug in workspaceID.
// slugs must be sorted and unique: every transaction takes the insert locks
// in the same order, so two creators of overlapping new sets cannot deadlock
// on each other. INSERT IGNORE waits for a racing creator like INSERT does,
// then skips the rows it created; unlike ON DUPLICATE KEY UPDATE it takes
// only shared locks on existing rows, so keys sharing a hot permission do
// not serialise. Validation has already made every value fit its column, so
// IGNORE cannot truncate anything.
func ensurePermissions(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID string, slugs []string) error {
	if len(slugs) == 0 {
		return nil
	}
	args := make([]any, 0, 4*len(slugs))
	for _, slug := range slugs {
		args = append(args, newID("perm"), workspaceID, slug, utc(now))
	}
	_, err := tx.ExecContext(ctx, `INSERT IGNORE INTO keystore_permissions (id, workspace_id, slug, created_at) VALUES `+rows(len(slugs), 4), args...)
	if err != nil {
		return fmt.Errorf("keystore: create permissions: %w", err)
	}
	return nil
}

// linkPermissions links keyID to the permissions of slugs (sorted, unique,
// all existing).
func linkPermissions(ctx context.Context, tx *sqlx.Tx, keyID, workspaceID string, slugs []string) error {
	if len(slugs) == 0 {
		return nil
	}
	n, err := linkByName(ctx, tx, "keystore_key_permissions", "permission_id", "keystore_permissions", "slug", keyID, workspaceID, slugs)
	if err != nil {
		return fmt.Errorf("keystore: link permissions: %w", err)
	}
	if n != int64(len(slugs)) {
		return fmt.Errorf("keystore: link permissions: linked %d of %d: %w", n, len(slugs), errConcurrentChange)
	}
	return nil
}

// linkByName inserts a row (keyID, id) into the link table for every row of
// source in workspaceID whose nameColumn is one of names, and returns how
// many it linked. The INSERT ... SELECT reads them under shared locks, so it
// sees rows other transactions just committed and keeps them from being
// deleted until this transaction ends. The table and column names are
// constants of the callers, never input.
func linkByName(ctx context.Context, tx *sqlx.Tx, table, column, source, nameColumn, keyID, workspaceID string, names []string) (int64, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (key_id, `+column+`)
		SELECT ?, id FROM `+source+` WHERE workspace_id = ? AND `+nameColumn+` IN (`+placeholders(len(names))+`)
		LOCK IN SHARE MODE`, append([]any{keyID, workspaceID}, anys(names)...)...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// sortedUnique returns the values sorted and without duplicates, the fixed
// order in which every transaction locks them.
func sortedUnique(values []string) []string {
	out := slices.Clone(values)
	slices.Sort(out)
	return slices.Compact(out)
}

func anys(values []string) []any {
	out := make([]any, len(values))
	for i, v := range values {
		out[i] = v
	}
	return out
}

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
			return row.identity(), s.writeAudit(ctx, tx, now, workspaceID, audit{event: EventIdentityCreate, identityID: row.ID})
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
