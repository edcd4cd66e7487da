package keystore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// Audit event types.
const (
	EventKeyCreate      = "key.create"
	EventKeyUpdate      = "key.update"
	EventKeyDelete      = "key.delete"
	EventKeyReroll      = "key.reroll"
	EventKeyImport      = "key.import"
	EventIdentityCreate = "identity.create"
	EventIdentityUpdate = "identity.update"
	EventIdentityDelete = "identity.delete"
	EventRoleCreate     = "role.create"
	EventRoleUpdate     = "role.update"
	EventRoleDelete     = "role.delete"
)

// AuditEvent records one mutation. It is written in the mutation's own
// transaction: if the transaction rolls back, so does its event, and a
// transaction that was retried leaves exactly one.
type AuditEvent struct {
	ID          string    // made by keystore; ListAuditEvents pages in ID order
	WorkspaceID string    // the workspace of the mutation
	Actor       string    // from ContextWithActor; "" when none was given
	Event       string    // one of the Event* constants
	KeyID       string    // the targets; "" when not applicable
	IdentityID  string    // the identity; on key events, the owner the key got (create, link) or had (delete)
	RoleID      string    // set on role events only
	CreatedAt   time.Time // time of the mutation by the Store's clock, UTC
}

type actorKey struct{}

// ContextWithActor returns a context whose mutations are recorded in the
// audit trail as done by actor (a user or service id of the caller's
// choosing, at most 255 characters; longer ones are cut, invalid UTF-8 is
// replaced and NUL bytes dropped).
func ContextWithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) any {
	actor, _ := ctx.Value(actorKey{}).(string)
	if actor == "" {
		return nil
	}
	actor = strings.ReplaceAll(strings.ToValidUTF8(actor, "\uFFFD"), "\x00", "")
	if r := []rune(actor); len(r) > limitIDChars {
		actor = string(r[:limitIDChars])
	}
	return actor
}

// audit is an event about to be written.
type audit struct {
	event                     string
	keyID, identityID, roleID string
}

// trail returns the statements that record a mutation, written in the
// mutation's own transaction whichever way it is sent (by writeTrail, or
// in one round trip by execOneTrip): the INSERT of its audit events, or
// under WithoutAudit the INSERT of its receipt, then the change feed's
// statements for what the events changed (changes.go). The first trail
// built for the pending receipt ctx carries gives it its id (the first
// event's, or the receipt row's), and records in it what changed. A row
// that every mutation must write with its changes belongs here. A
// mutation writes its trail after the last lock it takes.
func (s *Store) trail(ctx context.Context, now time.Time, workspaceID string, events []audit) []statement {
	p := pendingFrom(ctx)
	var fresh []string
	for _, e := range events {
		fresh = append(fresh, p.changed(changedBy(workspaceID, e))...)
	}
	return append(s.record(ctx, p, now, workspaceID, events), changeStatements(fresh)...)
}

// record returns the INSERT of the audit events, or under WithoutAudit of
// the receipt.
func (s *Store) record(ctx context.Context, p *pending, now time.Time, workspaceID string, events []audit) []statement {
	if s.noAudit {
		if id := p.claim("rcp"); id != "" {
			return []statement{{`INSERT INTO keystore_receipts (id) VALUES (?)`, []any{id}}}
		}
		return nil
	}
	if len(events) == 0 {
		return nil
	}
	actor := actorFrom(ctx)
	args := make([]any, 0, 8*len(events))
	for _, e := range events {
		id := p.claim("evt")
		if id == "" {
			id = newID("evt")
		}
		args = append(args, id, workspaceID, actor, e.event,
			nullString(e.keyID), nullString(e.identityID), nullString(e.roleID), utc(now))
	}
	return []statement{{`INSERT INTO keystore_audit_events
		(id, workspace_id, actor, event, key_id, identity_id, role_id, created_at) VALUES ` + rows(len(events), 8), args}}
}

// writeTrail runs the trail of events in the caller's transaction, in one
// round trip on MariaDB.
func (s *Store) writeTrail(ctx context.Context, tx *sqlx.Tx, now time.Time, workspaceID string, events ...audit) error {
	if err := s.execAll(ctx, tx, s.trail(ctx, now, workspaceID, events)); err != nil {
		return fmt.Errorf("keystore: write audit event: %w", err)
	}
	return nil
}

// keyCreatedTrail is the trail of the key.create event of keyID, its
// owner selected from the key's row: written only if the key was, with the
// owner the key got. For a block whose key INSERT reads its owner (see
// createKeyOneTrip), which stops when it wrote no key. It takes the id of
// ctx's pending receipt anew: the block that claimed it before rolled
// back. Under WithoutAudit there is none: the key is the receipt.
func (s *Store) keyCreatedTrail(ctx context.Context, now time.Time, workspaceID, keyID string) []statement {
	if s.noAudit {
		return nil // the key is the receipt
	}
	p := pendingFrom(ctx)
	p.unclaim()
	return []statement{{`INSERT INTO keystore_audit_events
		(id, workspace_id, actor, event, key_id, identity_id, role_id, created_at)
		SELECT ?, ?, ?, ?, id, identity_id, NULL, ? FROM keystore_keys WHERE id = ?`,
		[]any{cmp.Or(p.claim("evt"), newID("evt")), workspaceID, actorFrom(ctx), EventKeyCreate, utc(now), keyID}}}
}

// ListAuditEvents returns a page of the audit events of a workspace, oldest
// first, read from the replica if the Store has one. Errors:
// ErrInvalidInput for a bad request.
func (s *Store) ListAuditEvents(ctx context.Context, req ListAuditEventsRequest) (Page[AuditEvent], error) {
	limit, err := pageLimit(req.Limit)
	if err == nil {
		err = validateCursor(req.Cursor)
	}
	if err == nil {
		err = validateID("WorkspaceID", req.WorkspaceID, limitIDChars)
	}
	if err != nil {
		return Page[AuditEvent]{}, err
	}
	query := `SELECT id, workspace_id, actor, event, key_id, identity_id, role_id, created_at
		FROM keystore_audit_events WHERE workspace_id = ? AND id > ?`
	args := []any{req.WorkspaceID, req.Cursor}
	for _, f := range []struct{ column, field, value string }{
		{"key_id", "KeyID", req.KeyID}, {"identity_id", "IdentityID", req.IdentityID}, {"role_id", "RoleID", req.RoleID},
	} {
		if f.value != "" {
			if err := validateRefID(f.field, f.value); err != nil {
				return Page[AuditEvent]{}, err
			}
			query += " AND " + f.column + " = ?"
			args = append(args, f.value)
		}
	}
	var rows []struct {
		ID          string         `db:"id"`
		WorkspaceID string         `db:"workspace_id"`
		Actor       sql.NullString `db:"actor"`
		Event       string         `db:"event"`
		KeyID       sql.NullString `db:"key_id"`
		IdentityID  sql.NullString `db:"identity_id"`
		RoleID      sql.NullString `db:"role_id"`
		CreatedAt   dbTime         `db:"created_at"`
	}
	err = s.read(ctx, func(ctx context.Context, db *sqlx.DB) error {
		rows = nil
		return db.SelectContext(ctx, &rows, query+" ORDER BY id LIMIT ?", append(args, limit+1)...)
	})
	if err != nil {
		return Page[AuditEvent]{}, fmt.Errorf("keystore: list audit events: %w", err)
	}
	events := make([]AuditEvent, len(rows))
	for i, r := range rows {
		events[i] = AuditEvent{ID: r.ID, WorkspaceID: r.WorkspaceID, Actor: r.Actor.String, Event: r.Event,
			KeyID: r.KeyID.String, IdentityID: r.IdentityID.String, RoleID: r.RoleID.String, CreatedAt: r.CreatedAt.Time}
	}
	return makePage(events, limit, func(e AuditEvent) string { return e.ID }), nil
}
