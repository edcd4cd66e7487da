package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"
)

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
