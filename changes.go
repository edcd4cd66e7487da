package keystore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jmoiron/sqlx"
)

// What a mutation changed, written to the change feed for the
// verification caches of every Store (feed.go reads it).
//
// A mutation that can change a verification's answer names what it
// changed, and the last statements of its transaction write those names
// to keystore_changes (migration 005): a key ("k:" and its id), an
// identity, whose copies every key of it carries ("i:"), a workspace,
// whose keys' permissions a role change rewrites ("w:"), or every key a
// cache knows as unknown ("n:", for imports: an imported key's plaintext
// may have been verified before it existed). Creations name nothing:
// nobody can have verified a generated key before CreateKey returned it.
//
// The feed is written last so that its shard's row lock, which makes the
// shard's writers commit one after the other, is held only for the COMMIT
// and is the last lock the transaction takes (no lock-order cycle with
// the rows it changed before).

// What a change names.
func keyRef(id string) string       { return "k:" + id }
func identityRef(id string) string  { return "i:" + id }
func workspaceRef(id string) string { return "w:" + id }

const unknownKeysRef = "n:"

// changedBy returns what the mutation of event e in workspaceID changes in
// verification answers, or "" for nothing.
func changedBy(workspaceID string, e audit) string {
	switch e.event {
	case EventKeyUpdate, EventKeyDelete, EventKeyReroll:
		return keyRef(e.keyID)
	case EventKeyImport:
		return unknownKeysRef
	case EventIdentityUpdate, EventIdentityDelete:
		return identityRef(e.identityID)
	case EventRoleUpdate, EventRoleDelete:
		return workspaceRef(workspaceID)
	}
	return ""
}

// changed records refs as changed by p's transaction.
func (p *pending) changed(refs ...string) {
	if p == nil {
		return
	}
	for _, r := range refs {
		if r != "" && !slices.Contains(p.changes, r) {
			p.changes = append(p.changes, r)
		}
	}
}

// changeStatements returns the statements that write p's changes to the
// feed, none when it changed nothing. They go last, just before COMMIT.
// The shard is the connection's (its server thread id modulo the shards),
// so that transactions of different connections seldom wait for each
// other's commit; LAST_INSERT_ID(expr) carries the shard's new number from
// the UPDATE to the INSERT on the same connection, without a read.
func (p *pending) changeStatements() []statement {
	if p == nil || len(p.changes) == 0 {
		return nil
	}
	b, _ := json.Marshal(p.changes) // strings always encode
	refs := string(b)
	return []statement{
		{`UPDATE keystore_change_shards SET seq = LAST_INSERT_ID(seq + 1) WHERE shard = MOD(CONNECTION_ID(), ?)`, []any{feedShards}},
		{`INSERT INTO keystore_changes (shard, slot, seq, refs)
			VALUES (MOD(CONNECTION_ID(), ?), MOD(LAST_INSERT_ID(), ?), LAST_INSERT_ID(), ?)
			ON DUPLICATE KEY UPDATE seq = LAST_INSERT_ID(), refs = ?`, []any{feedShards, feedRing, refs, refs}},
	}
}

// writeChanges runs p's change statements in tx: on MariaDB in one
// round trip, as an anonymous compound statement inside the transaction
// (it neither begins nor commits one), elsewhere one by one.
func (s *Store) writeChanges(ctx context.Context, tx *sqlx.Tx, p *pending) error {
	stmts := p.changeStatements()
	if len(stmts) == 0 {
		return nil
	}
	if !s.noOneTrip.Load() {
		query, args := "BEGIN NOT ATOMIC "+stmts[0].query+"; "+stmts[1].query+"; END", slices.Concat(stmts[0].args, stmts[1].args)
		_, err := tx.ExecContext(ctx, query, args...)
		if err == nil || !isParseError(err) && !isUnsupportedPrepare(err) {
			return wrapChangeErr(err)
		}
		s.noOneTrip.Store(true) // a parse error runs nothing and leaves the transaction as it was
	}
	for _, st := range stmts {
		if _, err := tx.ExecContext(ctx, st.query, st.args...); err != nil {
			return wrapChangeErr(err)
		}
	}
	return nil
}

func wrapChangeErr(err error) error {
	if err != nil {
		return fmt.Errorf("keystore: write change feed: %w", err)
	}
	return nil
}
