package keystore

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/jmoiron/sqlx"
)

// What a mutation changed, written to the change feed for the
// verification caches of every Store (feed.go reads it).
//
// A mutation that can change a verification's answer names what it
// changed, and its trail (audit.go) writes those names to keystore_changes
// (migration 005) with its audit event or receipt, in the same round trip
// on MariaDB: a key ("k:" and its id), an identity, whose copies every key
// of it carries ("i:"), a workspace, whose keys' permissions a role change
// rewrites ("w:"), or every key a cache knows as unknown ("n:", for
// imports: an imported key's plaintext may have been verified before it
// existed). Creations name nothing: nobody can have verified a generated
// key before CreateKey returned it.
//
// Every mutation writes its trail after the last lock it takes (what
// follows are plain reads), so the shard's row lock, which makes the
// shard's writers commit one after the other, is held only until the
// COMMIT and is the last lock the transaction takes: no lock-order cycle
// with the rows it changed before. Keep it so.

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

// changed records refs as changed by p's transaction and returns those it
// had not recorded yet.
func (p *pending) changed(refs ...string) (fresh []string) {
	if p == nil {
		return nil
	}
	for _, r := range refs {
		if r != "" && !slices.Contains(p.changes, r) {
			p.changes = append(p.changes, r)
			fresh = append(fresh, r)
		}
	}
	return fresh
}

// changeStatements returns the statements that write refs to the feed,
// none for no refs. The shard is the connection's (its server thread id
// modulo the shards), so that transactions of different connections
// seldom wait for each other's commit; LAST_INSERT_ID(expr) carries the
// shard's new number from the UPDATE to the INSERT on the same
// connection, without a read. A transaction that writes twice takes two
// numbers of its shard.
func changeStatements(refs []string) []statement {
	if len(refs) == 0 {
		return nil
	}
	b, _ := json.Marshal(refs) // strings always encode
	return []statement{
		{`UPDATE keystore_change_shards SET seq = LAST_INSERT_ID(seq + 1) WHERE shard = MOD(CONNECTION_ID(), ?)`, []any{feedShards}},
		{`INSERT INTO keystore_changes (shard, slot, seq, refs)
			VALUES (MOD(CONNECTION_ID(), ?), MOD(LAST_INSERT_ID(), ?), LAST_INSERT_ID(), ?)
			ON DUPLICATE KEY UPDATE seq = LAST_INSERT_ID(), refs = ?`, []any{feedShards, feedRing, string(b), string(b)}},
	}
}

// execAll runs stmts in tx: on MariaDB in one round trip, as an anonymous
// compound statement inside the transaction (it neither begins nor
// commits one), elsewhere one by one.
func (s *Store) execAll(ctx context.Context, tx *sqlx.Tx, stmts []statement) error {
	if len(stmts) > 1 && !s.noOneTrip.Load() {
		var b strings.Builder
		var args []any
		b.WriteString("BEGIN NOT ATOMIC ")
		for _, st := range stmts {
			b.WriteString(st.query)
			b.WriteString("; ")
			args = append(args, st.args...)
		}
		b.WriteString("END")
		_, err := tx.ExecContext(ctx, b.String(), args...)
		if err == nil || !isParseError(err) && !isUnsupportedPrepare(err) {
			return err
		}
		s.noOneTrip.Store(true) // a parse error ran nothing and left the transaction as it was
	}
	for _, st := range stmts {
		if _, err := tx.ExecContext(ctx, st.query, st.args...); err != nil {
			return err
		}
	}
	return nil
}
