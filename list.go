package keystore

import (
	"context"
	"fmt"

	"github.com/jmoiron/sqlx"
)

// ListKeys returns a page of the live (not deleted) keys of a key space, or,
// when req.ExternalID is set, of the live identity of ExternalID (only those
// in req.KeySpaceID if it is set too), in creation order. Each page is one
// statement, on the replica if the Store has one, walking an index from the
// cursor. No key is
// listed twice; a key committed while a listing is paged may be missed
// (ids are made before commit, so commits are not in id order).
// An ExternalID without a live identity lists no keys.
//
// Errors: ErrInvalidInput for an invalid request (WorkspaceID is required,
// and KeySpaceID unless ExternalID is set; Limit 0..MaxPageSize; Cursor ""
// or a NextCursor).
func (s *Store) ListKeys(ctx context.Context, req ListKeysRequest) (Page[Key], error) {
	limit, err := req.validate()
	if err != nil {
		return Page[Key]{}, err
	}
	where := `WHERE k.workspace_id = ? AND k.deleted_at IS NULL AND k.id > ?`
	args := []any{req.WorkspaceID, req.Cursor}
	if req.ExternalID != "" {
		where += ` AND k.identity_id = (SELECT id FROM keystore_identities
			WHERE workspace_id = ? AND external_id = ? AND live = 1)`
		args = append(args, req.WorkspaceID, req.ExternalID)
	}
	if req.KeySpaceID != "" {
		where += ` AND k.key_space_id = ?`
		args = append(args, req.KeySpaceID)
	}
	var rows []keyRow
	err = s.read(ctx, func(ctx context.Context, db *sqlx.DB) error {
		rows = nil
		return db.SelectContext(ctx, &rows, selectKeyFrom+where+` ORDER BY k.id LIMIT ?`, append(args, limit+1)...)
	})
	if err != nil {
		return Page[Key]{}, fmt.Errorf("keystore: list keys: %w", err)
	}
	keys, now := make([]Key, len(rows)), s.clock()
	for i, r := range rows {
		keys[i] = r.key(now)
	}
	return makePage(keys, limit, func(k Key) string { return k.ID }), nil
}

func (r *ListKeysRequest) validate() (limit int, err error) {
	if err := validateID("WorkspaceID", r.WorkspaceID, limitIDChars); err != nil {
		return 0, err
	}
	if r.ExternalID != "" {
		err = validateID("ExternalID", r.ExternalID, limitIDChars)
	}
	if err == nil && (r.ExternalID == "" || r.KeySpaceID != "") {
		err = validateID("KeySpaceID", r.KeySpaceID, limitIDChars)
	}
	if err == nil {
		err = validateCursor(r.Cursor)
	}
	if err != nil {
		return 0, err
	}
	return pageLimit(r.Limit)
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
