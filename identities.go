package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/jmoiron/sqlx"
)

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
		sets, args := "updated_at = ?", []any{utc(now)}
		var keySets []string
		var keyArgs []any
		if req.Meta.Present() {
			sets, args = sets+", meta = ?", append(args, meta)
			keySets, keyArgs = append(keySets, "owner_meta = ?"), append(keyArgs, meta)
		}
		if req.Ratelimits.Present() {
			rl := ratelimitsValue(valueOrZero(req.Ratelimits))
			sets, args = sets+", ratelimits = ?", append(args, rl)
			keySets, keyArgs = append(keySets, "owner_ratelimits = ?"), append(keyArgs, rl)
		}
		if err := exec(ctx, tx, "update identity", `UPDATE keystore_identities SET `+sets+` WHERE id = ?`, append(args, id)...); err != nil {
			return Identity{}, err
		}
		// The copies on its keys, under the identity's exclusive lock: a
		// key being created for it holds a shared one and is rewritten
		// here once it has committed (see insertOwnedKey).
		if len(keySets) > 0 {
			if err := exec(ctx, tx, "update keys of identity", `UPDATE keystore_keys SET `+strings.Join(keySets, ", ")+
				` WHERE identity_id = ?`, append(keyArgs, id)...); err != nil {
				return Identity{}, err
			}
		}
		if err := s.writeAudit(ctx, tx, now, req.WorkspaceID, audit{event: EventIdentityUpdate, identityID: id}); err != nil {
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
		return struct{}{}, s.writeAudit(ctx, tx, now, workspaceID, audit{event: EventIdentityDelete, identityID: id})
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

// exec runs one statement of a transaction, naming it in its error.
func exec(ctx context.Context, tx *sqlx.Tx, what, query string, args ...any) error {
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("keystore: %s: %w", what, err)
	}
	return nil
}
