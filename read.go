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

// GetKey returns the key keyID of workspaceID, read from the primary in one
// statement. It returns an error matching ErrNotFound when the key does not
// exist, was deleted, or belongs to another workspace.
func (s *Store) GetKey(ctx context.Context, workspaceID, keyID string) (Key, error) {
	return getKey(ctx, s.db, workspaceID, keyID)
}

// FindIdentity returns the live identity of externalID in workspaceID, with
// its Meta and Ratelimits, read from the primary in one statement.
//
// Errors: ErrInvalidInput for an invalid workspaceID or externalID;
// ErrNotFound when there is no live identity of externalID.
func (s *Store) FindIdentity(ctx context.Context, workspaceID, externalID string) (Identity, error) {
	if err := validateIdentityRef(workspaceID, externalID); err != nil {
		return Identity{}, err
	}
	var row identityRow
	err := s.db.GetContext(ctx, &row, selectIdentityFrom+`WHERE i.workspace_id = ? AND i.external_id = ? AND i.live = 1`,
		workspaceID, externalID)
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
// identities: the row and its ratelimits, one row per identity. Callers
// append a WHERE clause over i.
const selectIdentityFrom = `SELECT i.id, i.workspace_id, i.external_id, i.meta, i.created_at, i.updated_at,
	(SELECT JSON_ARRAYAGG(` + ratelimitObject + `) FROM keystore_identity_ratelimits rl
		WHERE rl.identity_id = i.id) AS ratelimits
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
	CreatedAt      dbTime                      `db:"created_at"`
	UpdatedAt      dbTime                      `db:"updated_at"`
	Permissions    jsonColumn[[]string]        `db:"permissions"`
	Roles          jsonColumn[[]string]        `db:"roles"`
	Ratelimits     jsonColumn[[]ratelimitJSON] `db:"ratelimits"`
}

// ratelimitsFromJSON converts ratelimits read as JSON objects, sorted by
// name.
func ratelimitsFromJSON(rows []ratelimitJSON) []Ratelimit {
	var out []Ratelimit
	for _, rl := range rows {
		out = append(out, Ratelimit{Name: rl.Name, Limit: rl.Limit,
			Duration: time.Duration(rl.Millis) * time.Millisecond, AutoApply: rl.AutoApply != 0})
	}
	slices.SortFunc(out, func(a, b Ratelimit) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ratelimitJSON is a ratelimit row as ratelimitObject.
type ratelimitJSON struct {
	Name      string `json:"n"`
	Limit     int64  `json:"l"`
	Millis    int64  `json:"d"`
	AutoApply int    `json:"a"`
}

// ratelimitObject is a row of a ratelimit table aliased rl, as JSON.
const ratelimitObject = `JSON_OBJECT('n', rl.name, 'l', rl.lim, 'd', rl.duration_ms, 'a', rl.auto_apply)`

// selectKeyFrom is the SELECT list and FROM clause of every key read: the
// key, its owner, and all its sets, one row per key, so a key (or a page of
// keys) is read in one statement. Callers append a WHERE clause over k.
//
// permissions is the key's direct permissions followed by those of its
// roles, as one JSON array that may hold duplicates: MySQL's JSON_ARRAYAGG
// has no DISTINCT, and MariaDB cannot correlate a derived table that would
// UNION them first. keyRow.key sorts and dedupes it. Each part is an index
// lookup by key id.
const selectKeyFrom = `SELECT k.id, k.workspace_id, k.key_space_id, k.start, k.name, i.id AS identity_id,
	i.external_id, k.meta, k.expires, k.enabled, k.remaining, k.refill_interval,
	k.refill_amount, k.refill_day, k.created_at, k.updated_at,
	JSON_MERGE_PRESERVE(
		COALESCE((SELECT JSON_ARRAYAGG(p.slug) FROM keystore_key_permissions kp
			JOIN keystore_permissions p ON p.id = kp.permission_id WHERE kp.key_id = k.id), '[]'),
		COALESCE((SELECT JSON_ARRAYAGG(p.slug) FROM keystore_key_roles kr
			JOIN keystore_role_permissions rp ON rp.role_id = kr.role_id
			JOIN keystore_permissions p ON p.id = rp.permission_id WHERE kr.key_id = k.id), '[]')) AS permissions,
	(SELECT JSON_ARRAYAGG(r.name) FROM keystore_key_roles kr
		JOIN keystore_roles r ON r.id = kr.role_id WHERE kr.key_id = k.id) AS roles,
	(SELECT JSON_ARRAYAGG(` + ratelimitObject + `)
		FROM keystore_ratelimits rl WHERE rl.key_id = k.id) AS ratelimits
FROM keystore_keys k LEFT JOIN keystore_identities i ON i.id = k.identity_id AND i.live = 1 `

const selectKey = selectKeyFrom + `WHERE k.id = ? AND k.workspace_id = ? AND k.deleted_at IS NULL`

func getKey(ctx context.Context, q sqlx.QueryerContext, workspaceID, keyID string) (Key, error) {
	var row keyRow
	err := sqlx.GetContext(ctx, q, &row, selectKey, keyID, workspaceID)
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, fmt.Errorf("keystore: key %q: %w", keyID, ErrNotFound)
	}
	if err != nil {
		return Key{}, fmt.Errorf("keystore: get key: %w", err)
	}
	return row.key(), nil
}

func (r keyRow) key() Key {
	// Sets are sorted here rather than in SQL: MySQL's JSON_ARRAYAGG has no
	// ORDER BY.
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
		k.Credits = &Credits{Remaining: r.Remaining.Int64}
		if r.RefillInterval.Valid {
			k.Credits.Refill = &Refill{Interval: RefillInterval(r.RefillInterval.String),
				Amount: r.RefillAmount.Int64, Day: int(r.RefillDay.Int64)}
		}
	}
	k.Ratelimits = ratelimitsFromJSON(r.Ratelimits.V)
	return k
}
