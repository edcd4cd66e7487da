package keystore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// A key's permissions (direct and through its roles), its role names and
// its ratelimits are kept as JSON on the key's row, so that VerifyKey and
// GetKey read one row instead of aggregating link tables: measured, each
// correlated aggregate cost about as much as the whole bare lookup.
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

// jsonList encodes a set of strings for a JSON column; empty is NULL.
func jsonList(values []string) any {
	if len(values) == 0 {
		return nil
	}
	b, _ := json.Marshal(values) // strings always marshal
	return string(b)
}

// ratelimitJSON is how a ratelimit is stored in a JSON column.
type ratelimitJSON struct {
	Name      string `json:"n"`
	Limit     int64  `json:"l"`
	Millis    int64  `json:"d"`
	AutoApply int    `json:"a"`
}

// ratelimitsValue encodes ratelimits for a JSON column; empty is NULL.
// Durations are stored in whole milliseconds.
func ratelimitsValue(rls []Ratelimit) any {
	if len(rls) == 0 {
		return nil
	}
	rows := make([]ratelimitJSON, len(rls))
	for i, rl := range rls {
		rows[i] = ratelimitJSON{Name: rl.Name, Limit: rl.Limit, Millis: rl.Duration.Milliseconds()}
		if rl.AutoApply {
			rows[i].AutoApply = 1
		}
	}
	b, _ := json.Marshal(rows) // plain values always marshal
	return string(b)
}

// ratelimitsFromJSON decodes stored ratelimits, sorted by name.
func ratelimitsFromJSON(rows []ratelimitJSON) []Ratelimit {
	var out []Ratelimit
	for _, rl := range rows {
		out = append(out, Ratelimit{Name: rl.Name, Limit: rl.Limit,
			Duration: time.Duration(rl.Millis) * time.Millisecond, AutoApply: rl.AutoApply != 0})
	}
	slices.SortFunc(out, func(a, b Ratelimit) int { return strings.Compare(a.Name, b.Name) })
	return out
}
