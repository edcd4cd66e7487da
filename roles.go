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

// CreateRole makes sure a role named name exists in workspaceID and holds at
// least the permissions of permissionSlugs (missing permissions are
// created), and returns the role with all its permissions. It is idempotent:
// when the role exists, the given permissions are added to those it has
// (never removed), so repeating a call changes nothing. Concurrent calls for
// one new name all succeed and make one role, holding the union of their
// permissions.
//
// A call writes one audit event when it changed something: role.create when
// it created the role, role.update when it only added permissions to an
// existing role, and none when the role already held every permission.
//
// Errors: ErrInvalidInput (naming "WorkspaceID", "Name" or
// "Permissions[i]") when an argument is invalid; nothing is written.
// Otherwise the errors of [WithRetryTx].
func (s *Store) CreateRole(ctx context.Context, workspaceID, name string, permissionSlugs []string) (Role, error) {
	if err := validateRoleRef(workspaceID, name); err != nil {
		return Role{}, err
	}
	if err := validatePermissions("Permissions", permissionSlugs); err != nil {
		return Role{}, err
	}
	slugs := sortedUnique(permissionSlugs)
	now := s.clock()
	// READ COMMITTED: the final read must see the links a racing creator of
	// the same role committed after this transaction's first read.
	return tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (Role, error) {
		if err := liftAggregateLimit(ctx, tx); err != nil {
			return Role{}, err
		}
		// Permissions before the role, in the order CreateKey takes them
		// (permissions, then roles), so the two cannot deadlock.
		if err := ensurePermissions(ctx, tx, now, workspaceID, slugs); err != nil {
			return Role{}, err
		}
		id, created, err := ensureRole(ctx, tx, now, workspaceID, name)
		if err != nil {
			return Role{}, err
		}
		added, err := linkRolePermissions(ctx, tx, id, workspaceID, slugs)
		if err != nil {
			return Role{}, err
		}
		if added > 0 && !created {
			// Keys that hold the role now hold more permissions.
			if err := refreshRoleHolders(ctx, tx, now, id); err != nil {
				return Role{}, err
			}
		}
		event := audit{event: EventRoleCreate, roleID: id}
		if !created {
			event.event = EventRoleUpdate
		}
		if created || added > 0 {
			if err := s.writeTrail(ctx, tx, now, workspaceID, event); err != nil {
				return Role{}, err
			}
		}
		return readRole(ctx, tx, id)
	}, readCommitted)
}

// ensureRole returns the id of the role name, creating it when there is
// none, and holds the role's row exclusively until the transaction ends, so
// concurrent CreateRole and DeleteRole calls of one name apply one after the
// other.
//
// Unlike identities, which many writers find at once, a role is got or
// created only by CreateRole, so the exclusive lock costs nothing that
// matters, and it avoids a deadlock: when a role is deleted while creators
// of its name wait, a plain INSERT leaves each of them holding a shared lock
// on the deleted record and asking for an exclusive one to reuse it. INSERT
// ... ON DUPLICATE KEY UPDATE asks for the exclusive lock at once.
func ensureRole(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID, name string) (id string, created bool, err error) {
	newRole := newID("role")
	_, err = tx.ExecContext(ctx, `INSERT INTO keystore_roles (id, workspace_id, name, created_at) VALUES (?, ?, ?, ?)
		ON DUPLICATE KEY UPDATE id = id`, newRole, workspaceID, name, utc(now))
	if err != nil {
		return "", false, fmt.Errorf("keystore: create role: %w", err)
	}
	// The exclusive lock is ours. Whether the INSERT created the row is read
	// back rather than taken from the affected-rows count, which a DSN with
	// clientFoundRows=true reports as 1 for an existing row too.
	if err := tx.GetContext(ctx, &id, `SELECT id FROM keystore_roles WHERE workspace_id = ? AND name = ? FOR UPDATE`,
		workspaceID, name); err != nil {
		return "", false, fmt.Errorf("keystore: read role: %w", err)
	}
	return id, id == newRole, nil
}

// linkRolePermissions links roleID to the permissions of slugs (sorted,
// unique, all existing) that it does not hold yet, and returns how many it
// linked. Like linkPermissions, the INSERT ... SELECT reads the permissions
// under shared locks; IGNORE skips links that exist, waiting for a racing
// creator of the same link as INSERT would. Rows go in in index order
// (ORDER BY id), so concurrent creators of one role take the link rows'
// locks in one order.
func linkRolePermissions(ctx context.Context, tx *sqlx.Tx, roleID, workspaceID string, slugs []string) (int64, error) {
	if len(slugs) == 0 {
		return 0, nil
	}
	args := append([]any{roleID, workspaceID}, anys(slugs)...)
	res, err := tx.ExecContext(ctx, `INSERT IGNORE INTO keystore_role_permissions (role_id, permission_id)
		SELECT ?, id FROM keystore_permissions WHERE workspace_id = ? AND slug IN (`+placeholders(len(slugs))+`)
		ORDER BY id LOCK IN SHARE MODE`, args...)
	if err != nil {
		return 0, fmt.Errorf("keystore: link role permissions: %w", err)
	}
	return res.RowsAffected()
}

// readRole reads a role with its permissions in one statement.
func readRole(ctx context.Context, tx *sqlx.Tx, id string) (Role, error) {
	var row struct {
		ID          string               `db:"id"`
		WorkspaceID string               `db:"workspace_id"`
		Name        string               `db:"name"`
		CreatedAt   dbTime               `db:"created_at"`
		Permissions jsonColumn[[]string] `db:"permissions"`
	}
	err := tx.GetContext(ctx, &row, `SELECT r.id, r.workspace_id, r.name, r.created_at,
		(SELECT JSON_ARRAYAGG(p.slug) FROM keystore_role_permissions rp
			JOIN keystore_permissions p ON p.id = rp.permission_id WHERE rp.role_id = r.id) AS permissions
		FROM keystore_roles r WHERE r.id = ?`, id)
	if err != nil {
		return Role{}, fmt.Errorf("keystore: read role: %w", err)
	}
	slices.Sort(row.Permissions.V)
	return Role{ID: row.ID, WorkspaceID: row.WorkspaceID, Name: row.Name, Permissions: row.Permissions.V,
		CreatedAt: row.CreatedAt.Time}, nil
}

// DeleteRole deletes the role name and every link to it, in one
// transaction: keys that held the role lose it, and with it the permissions
// they had only through it; their direct permissions stay. Unlike keys and
// identities, a role is deleted for good (the audit event keeps its id), so
// the name can be created again at once.
//
// Errors: ErrInvalidInput for an invalid workspaceID or name; ErrNotFound
// when the role does not exist. Otherwise the errors of [WithRetryTx].
func (s *Store) DeleteRole(ctx context.Context, workspaceID, name string) error {
	if err := validateRoleRef(workspaceID, name); err != nil {
		return err
	}
	now := s.clock()
	_, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		// The exclusive lock comes first: a writer linking a key or a
		// permission to this role (under a shared lock) waits for it, then
		// finds the role gone. Every lock on a role is taken through its
		// primary key (workspace_id, name), never through the id index, so
		// no two transactions take a role's locks in different orders.
		var id string
		err := tx.GetContext(ctx, &id, `SELECT id FROM keystore_roles WHERE workspace_id = ? AND name = ? FOR UPDATE`,
			workspaceID, name)
		if errors.Is(err, sql.ErrNoRows) {
			return struct{}{}, fmt.Errorf("keystore: role %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return struct{}{}, fmt.Errorf("keystore: lock role: %w", err)
		}
		if err := liftAggregateLimit(ctx, tx); err != nil {
			return struct{}{}, err
		}
		// The role and its permissions go first, so that refreshing its
		// keys, found through their links, leaves both out; then the links.
		err = exec(ctx, tx, "unlink role permissions", `DELETE FROM keystore_role_permissions WHERE role_id = ?`, id)
		if err == nil {
			err = exec(ctx, tx, "delete role", `DELETE FROM keystore_roles WHERE workspace_id = ? AND name = ?`, workspaceID, name)
		}
		if err == nil {
			err = refreshRoleHolders(ctx, tx, now, id)
		}
		if err == nil {
			err = exec(ctx, tx, "unlink role from keys", `DELETE FROM keystore_key_roles WHERE role_id = ?`, id)
		}
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.writeTrail(ctx, tx, now, workspaceID, audit{event: EventRoleDelete, roleID: id})
	}, readCommitted) // refreshing keys reads their links as last committed
	return err
}

func validateRoleRef(workspaceID, name string) error {
	if err := validateID("WorkspaceID", workspaceID, limitIDChars); err != nil {
		return err
	}
	return validateID("Name", name, limitNameChars)
}

// lockRoles takes shared locks on the roles named (sorted, unique) through
// their primary key, in name order, like every lock on a role, and returns
// the names it found (a locking read: it fixes no snapshot). Missing roles
// are left for the caller to report.
func lockRoles(ctx context.Context, tx *sqlx.Tx, workspaceID string, names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	var found []string
	err := tx.SelectContext(ctx, &found, `SELECT name FROM keystore_roles WHERE workspace_id = ? AND name IN (`+
		placeholders(len(names))+`) ORDER BY name LOCK IN SHARE MODE`, append([]any{workspaceID}, anys(names)...)...)
	if err != nil {
		return nil, fmt.Errorf("keystore: lock roles: %w", err)
	}
	return found, nil
}

// linkRoles links keyID to the roles named (sorted, unique). Roles are not
// created here: a missing one is ErrNotFound.
func linkRoles(ctx context.Context, tx *sqlx.Tx, keyID, workspaceID string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	n, err := linkByName(ctx, tx, "keystore_key_roles", "role_id", "keystore_roles", "name", keyID, workspaceID, names, false)
	if err != nil {
		return fmt.Errorf("keystore: link roles: %w", err)
	}
	if n == int64(len(names)) {
		return nil
	}
	var found []string
	if err := tx.SelectContext(ctx, &found, `SELECT name FROM keystore_roles WHERE workspace_id = ? AND name IN (`+
		placeholders(len(names))+`)`, append([]any{workspaceID}, anys(names)...)...); err != nil {
		return fmt.Errorf("keystore: link roles: %w", err)
	}
	return missingRoles(names, found)
}

// missingRoles returns an error matching ErrNotFound that names the roles
// of names that are not among found, or nil when all are.
func missingRoles(names, found []string) error {
	missing := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return slices.Contains(found, n) })
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("keystore: roles %q: %w", missing, ErrNotFound)
}
