package keystore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jmoiron/sqlx"
)

// A key's permissions (direct and through its roles), its role names and
// its ratelimits are kept as JSON on the key's row, so that VerifyKey and
// GetKey read one row instead of aggregating link tables, each of which
// cost about as much as the whole lookup.
//
// The link tables (keystore_key_permissions, keystore_key_roles,
// keystore_role_permissions) stay the truth for permissions and roles; every
// transaction that changes them rewrites the affected keys' columns before
// it commits (refreshKeySets, refreshRoleHolders, or UpdateKey's own
// UPDATE). Ratelimits have no table: they belong to one
// key (or identity) and live only in its JSON column.
//
// Concurrency: a key's own links change only under its row lock (UpdateKey)
// or before it exists (CreateKey). A role's permissions change only under
// the role's exclusive lock (CreateRole, DeleteRole), and every transaction
// that links a key to a role holds a shared lock on the role until it
// commits, so a role change and a key linking that role apply one after the
// other, and the later one computes the key's columns from committed links.

// liftAggregateLimit lets MariaDB's JSON_ARRAYAGG build arrays longer than
// group_concat_max_len (1 MiB by default), which it otherwise cuts short,
// mid-slug, and a cut slug could name a broader permission. 1 GiB is
// MariaDB's maximum (a strict sql_mode refuses more; MySQL allows more),
// and far above the longest set a key can have. It is one
// statement, run only by the transactions that aggregate permissions in
// SQL (role changes, and key changes that involve roles). It sets the
// session variable, so it stays raised on that pooled connection.
func liftAggregateLimit(ctx context.Context, tx *sqlx.Tx) error {
	if _, err := tx.ExecContext(ctx, `SET SESSION group_concat_max_len = 1073741824`); err != nil {
		return fmt.Errorf("keystore: raise group_concat_max_len: %w", err)
	}
	return nil
}

// refreshKeySets recomputes the permissions and roles of one key from the
// link tables.
func refreshKeySets(ctx context.Context, tx *sqlx.Tx, keyID string) error {
	if err := liftAggregateLimit(ctx, tx); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE keystore_keys k SET `+setsFromLinks+` WHERE k.id = ?`, keyID)
	if err != nil {
		return fmt.Errorf("keystore: refresh key permissions: %w", err)
	}
	return nil
}

// refreshRoleHolders recomputes the permissions and roles of every key that
// holds roleID, by primary key in batches, so that only those keys' rows
// are locked. (A multi-table UPDATE joined from the links did the same in
// one statement, but MariaDB stages such updates in a temporary table, and
// under load one failed with error 6 deleting it.) The caller holds the
// role's exclusive lock, so no key gains the role meanwhile, and runs at
// READ COMMITTED.
//
// Each batch is locked (in id order) before its UPDATE. The UPDATE's
// subqueries read one snapshot, taken when the statement starts: had it
// started before an UpdateKey that holds a key of the batch (and is
// changing its roles) committed, it would have waited for that key and then
// written sets computed from the links before the change. Taken after
// every lock of the batch is held, the snapshot has all such changes.
func refreshRoleHolders(ctx context.Context, tx *sqlx.Tx, now time.Time, roleID string) error {
	var keyIDs []string
	if err := tx.SelectContext(ctx, &keyIDs, `SELECT key_id FROM keystore_key_roles WHERE role_id = ?`, roleID); err != nil {
		return fmt.Errorf("keystore: find the role's keys: %w", err)
	}
	for batch := range slices.Chunk(keyIDs, 500) {
		in := ` WHERE k.id IN (` + placeholders(len(batch)) + `)`
		var locked []string
		if err := tx.SelectContext(ctx, &locked, `SELECT k.id FROM keystore_keys k`+in+` ORDER BY k.id FOR UPDATE`, anys(batch)...); err != nil {
			return fmt.Errorf("keystore: lock the role's keys: %w", err)
		}
		_, err := tx.ExecContext(ctx, `UPDATE keystore_keys k SET k.updated_at = ?, `+setsFromLinks+in,
			append([]any{utc(now)}, anys(batch)...)...)
		if err != nil {
			return fmt.Errorf("keystore: refresh permissions of the role's keys: %w", err)
		}
	}
	return nil
}

// setsFromLinks is the SET clause that recomputes a key's permissions and
// roles from the link tables, inside an UPDATE of keystore_keys aliased k. The
// permissions may hold duplicates (a slug both direct and through a role):
// readers sort and deduplicate.
const setsFromLinks = `k.permissions = JSON_MERGE_PRESERVE(
		COALESCE((SELECT JSON_ARRAYAGG(p.slug) FROM keystore_key_permissions kp
			JOIN keystore_permissions p ON p.id = kp.permission_id WHERE kp.key_id = k.id), '[]'),
		COALESCE((SELECT JSON_ARRAYAGG(p.slug) FROM keystore_key_roles kr
			JOIN keystore_role_permissions rp ON rp.role_id = kr.role_id
			JOIN keystore_permissions p ON p.id = rp.permission_id WHERE kr.key_id = k.id), '[]')),
	k.roles = (SELECT JSON_ARRAYAGG(r.name) FROM keystore_key_roles kr
		JOIN keystore_roles r ON r.id = kr.role_id WHERE kr.key_id = k.id)`

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
	n, err := linkByName(ctx, tx, "keystore_key_permissions", "permission_id", "keystore_permissions", "slug", keyID, workspaceID, slugs, false)
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
// many it linked; with keep, a link that exists already is kept (INSERT
// IGNORE) rather than an error. The INSERT ... SELECT reads them under
// shared locks, so it sees rows other transactions just committed and keeps
// them from being deleted until this transaction ends. The table and column
// names are constants of the callers, never input.
func linkByName(ctx context.Context, tx *sqlx.Tx, table, column, source, nameColumn, keyID, workspaceID string, names []string, keep bool) (int64, error) {
	insert := `INSERT`
	if keep {
		insert = `INSERT IGNORE`
	}
	res, err := tx.ExecContext(ctx, insert+` INTO `+table+` (key_id, `+column+`)
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

// linkDeltas are the permissions and roles UpdateKey adds to and takes from
// a key without replacing its sets; each list is sorted and unique.
type linkDeltas struct {
	addPermissions, removePermissions, addRoles, removeRoles []string
}

func (d linkDeltas) empty() bool {
	return len(d.addPermissions)+len(d.removePermissions)+len(d.addRoles)+len(d.removeRoles) == 0
}

// apply changes keyID's links; the caller holds the key's lock and shared
// locks on the roles named, has made sure they exist, and recomputes the
// key's sets afterwards. Permissions to add are created when missing, as in
// CreateKey; a link that exists already is kept.
func (d linkDeltas) apply(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, keyID string) error {
	if len(d.addPermissions) > 0 {
		if err := ensurePermissions(ctx, tx, now, workspaceID, d.addPermissions); err != nil {
			return err
		}
		if _, err := linkByName(ctx, tx, "keystore_key_permissions", "permission_id", "keystore_permissions", "slug",
			keyID, workspaceID, d.addPermissions, true); err != nil {
			return fmt.Errorf("keystore: add permissions: %w", err)
		}
	}
	if err := removeLinks(ctx, tx, "keystore_key_permissions", "permission_id", "keystore_permissions", "slug",
		keyID, workspaceID, d.removePermissions); err != nil {
		return fmt.Errorf("keystore: remove permissions: %w", err)
	}
	if len(d.addRoles) > 0 {
		if _, err := linkByName(ctx, tx, "keystore_key_roles", "role_id", "keystore_roles", "name",
			keyID, workspaceID, d.addRoles, true); err != nil {
			return fmt.Errorf("keystore: add roles: %w", err)
		}
	}
	if err := removeLinks(ctx, tx, "keystore_key_roles", "role_id", "keystore_roles", "name",
		keyID, workspaceID, d.removeRoles); err != nil {
		return fmt.Errorf("keystore: remove roles: %w", err)
	}
	return nil
}

// removeLinks deletes keyID's links to the rows of source in workspaceID
// whose nameColumn is one of names. The table and column names are
// constants of the callers, never input.
func removeLinks(ctx context.Context, tx *sqlx.Tx, table, column, source, nameColumn, keyID, workspaceID string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE key_id = ? AND `+column+` IN (
		SELECT id FROM `+source+` WHERE workspace_id = ? AND `+nameColumn+` IN (`+placeholders(len(names))+`))`,
		append([]any{keyID, workspaceID}, anys(names)...)...)
	return err
}
