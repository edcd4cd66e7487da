package keystore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// ImportKeyRequest describes a key whose plaintext exists elsewhere (keys
// moved from another system): keystore stores its hash and never sees the
// plaintext.
type ImportKeyRequest struct {
	CreateKeyRequest        // Prefix and ByteLength must be empty: no secret is generated
	Hash             string // hex SHA-256 of the existing plaintext (64 hex digits, either case)
	Start            string // optional: the visible start of the plaintext, at most 32 printable ASCII characters
}

// MaxImportBatch is the most keys one ImportKeys call takes.
const MaxImportBatch = 1000

// importChunk is the most names (or links) an import sends in one
// statement.
const importChunk = 1000

// ImportKey stores a key of an existing plaintext, given by its hash, with
// everything CreateKey stores (owner found or created, permissions created,
// roles linked) and a key.import audit event, in one transaction. The
// returned CreatedKey has an empty Key; the original plaintext verifies from
// the moment ImportKey returns.
//
// Errors: ErrInvalidInput (a *ValidationError) for an invalid request, a
// malformed Hash, or a Hash already stored (naming Hash); ErrNotFound when
// a role does not exist. In those cases nothing is written. Otherwise the
// errors of [WithRetryTx].
func (s *Store) ImportKey(ctx context.Context, req ImportKeyRequest) (CreatedKey, error) {
	created, err := s.importKeys(ctx, []ImportKeyRequest{req}, "")
	if err != nil {
		return CreatedKey{}, err
	}
	return created[0], nil
}

// ImportKeys is ImportKey for up to MaxImportBatch keys at once, all in one
// transaction of a few statements (a dozen or so, whatever the number of
// keys): all are imported, or none. A *ValidationError names the request it
// is about, as in "[3].Hash". For a migration of many keys, call it with
// batches of MaxImportBatch.
func (s *Store) ImportKeys(ctx context.Context, reqs []ImportKeyRequest) ([]CreatedKey, error) {
	if len(reqs) > MaxImportBatch {
		return nil, invalid("reqs", "must hold at most %d keys", MaxImportBatch)
	}
	return s.importKeys(ctx, reqs, "[%d].")
}

// importing is one key of a batch, validated and ready to write.
type importing struct {
	req         *ImportKeyRequest
	keyID       string
	hash        []byte
	meta        any
	permissions []string    // sorted, unique
	roles       []string    // sorted, unique
	identity    identityRow // ID "" when the key has no owner; created when this batch made it
}

// importKeys validates every request (prefixing a ValidationError's field
// with fieldFormat and the request's index) and imports them all in one
// transaction.
func (s *Store) importKeys(ctx context.Context, reqs []ImportKeyRequest, fieldFormat string) ([]CreatedKey, error) {
	if len(reqs) == 0 {
		return []CreatedKey{}, nil
	}
	now := s.clock()
	keys := make([]importing, len(reqs))
	seen := make(map[string]int, len(reqs))
	for i := range reqs {
		k, err := prepareImport(&reqs[i], now)
		if err == nil {
			if j, dup := seen[string(k.hash)]; dup {
				err = invalid("Hash", "is the same as that of key %d of the batch", j)
			}
			seen[string(k.hash)] = i
		}
		if err != nil {
			return nil, indexed(fieldFormat, i, err)
		}
		keys[i] = k
	}
	created, err := tx(ctx, s, func(ctx context.Context, tx *sqlx.Tx) ([]CreatedKey, error) {
		if len(keys) > 0 {
			s.keyIsReceipt(ctx, keys[0].keyID)
		}
		return s.writeImports(ctx, tx, keys, fieldFormat, now)
	})
	if err != nil {
		if len(keys) == 1 {
			err = withKeyID(err, keys[0].keyID)
		}
		return nil, err
	}
	for _, k := range keys {
		s.createdHere(k.hash)
		if k.req.ExternalID != "" {
			s.hints.add(k.req.WorkspaceID, k.req.ExternalID, k.identity.ID)
		}
	}
	return created, nil
}

// prepareImport validates req and returns the key to write.
func prepareImport(req *ImportKeyRequest, now time.Time) (importing, error) {
	if req.Prefix != "" {
		return importing{}, invalid("Prefix", "must be empty: an imported key keeps its own plaintext")
	}
	if req.ByteLength != 0 {
		return importing{}, invalid("ByteLength", "must be 0: an imported key keeps its own plaintext")
	}
	if err := req.CreateKeyRequest.validate(now); err != nil {
		return importing{}, err
	}
	hash, err := hex.DecodeString(req.Hash)
	if err != nil || len(hash) != 32 {
		return importing{}, invalid("Hash", "must be a SHA-256 in hex: 64 hex digits")
	}
	if len(req.Start) > 32 || strings.IndexFunc(req.Start, func(r rune) bool { return r < ' ' || r > '~' }) >= 0 {
		return importing{}, invalid("Start", "must be at most 32 printable ASCII characters")
	}
	meta, err := metaValue(req.Meta)
	if err != nil {
		return importing{}, err
	}
	return importing{req: req, keyID: newID("key"), hash: hash, meta: meta,
		permissions: sortedUnique(req.Permissions), roles: sortedUnique(req.Roles)}, nil
}

// indexed prefixes the field of a *ValidationError with format and i.
func indexed(format string, i int, err error) error {
	var ve *ValidationError
	if format == "" || !errors.As(err, &ve) {
		return err
	}
	return &ValidationError{Field: fmt.Sprintf(format, i) + ve.Field, Reason: ve.Reason}
}

// writeImports writes a validated batch in the caller's transaction, in the
// order every write takes its locks: owners, permissions, roles, then the
// keys and their links, the sets of keys with roles, and the trail.
func (s *Store) writeImports(ctx context.Context, tx *sqlx.Tx, keys []importing, fieldFormat string, now time.Time) ([]CreatedKey, error) {
	if err := refuseStoredHashes(ctx, tx, keys, fieldFormat); err != nil {
		return nil, err
	}
	if err := importOwners(ctx, tx, keys, now); err != nil {
		return nil, err
	}
	byWorkspace := map[string][]*importing{}
	for i := range keys {
		byWorkspace[keys[i].req.WorkspaceID] = append(byWorkspace[keys[i].req.WorkspaceID], &keys[i])
	}
	var links [2][]any // key_permissions and key_roles rows
	for _, ws := range slices.Sorted(maps.Keys(byWorkspace)) {
		perms, roles := map[string]string{}, map[string]string{}
		var slugs, names []string
		for _, k := range byWorkspace[ws] {
			slugs, names = append(slugs, k.permissions...), append(names, k.roles...)
		}
		slugs, names = sortedUnique(slugs), sortedUnique(names)
		for chunk := range slices.Chunk(slugs, importChunk) { // in order: the locks stay sorted
			if err := ensurePermissions(ctx, tx, now, ws, chunk); err != nil {
				return nil, err
			}
			if err := readIDs(ctx, tx, perms, `SELECT slug, id FROM keystore_permissions`, ws, "slug", chunk); err != nil {
				return nil, err
			}
		}
		if err := readIDs(ctx, tx, roles, `SELECT name, id FROM keystore_roles`, ws, "name", names); err != nil {
			return nil, err
		}
		if err := missingRoles(names, slices.Collect(maps.Keys(roles))); err != nil {
			return nil, err
		}
		for _, k := range byWorkspace[ws] {
			for _, p := range k.permissions {
				links[0] = append(links[0], k.keyID, perms[p])
			}
			for _, r := range k.roles {
				links[1] = append(links[1], k.keyID, roles[r])
			}
		}
	}
	var rowsOfKeys [][]any // each key's values, in the order of names
	var names string
	var withRoles []any
	events := map[string][]audit{}
	newOwners := map[string]bool{}
	created := make([]CreatedKey, len(keys))
	for i, k := range keys {
		ws := k.req.WorkspaceID
		cols := newKeyRow(&k.req.CreateKeyRequest, k.keyID, k.req.Start, k.hash, k.meta, k.permissions, k.roles, now)
		if k.identity.ID != "" {
			cols.set(ownerCopy(&k.identity))
			if k.identity.created && !newOwners[k.identity.ID] {
				newOwners[k.identity.ID] = true
				events[ws] = append(events[ws], audit{event: EventIdentityCreate, identityID: k.identity.ID})
			}
		}
		names, rowsOfKeys = cols.names(), append(rowsOfKeys, cols.values())
		if len(k.roles) > 0 {
			withRoles = append(withRoles, k.keyID)
		}
		events[ws] = append(events[ws], audit{event: EventKeyImport, keyID: k.keyID, identityID: k.identity.ID})
		created[i] = CreatedKey{KeyID: k.keyID, IdentityID: k.identity.ID}
	}
	// A few hundred keys per INSERT keep it under max_allowed_packet (each
	// key's row can hold 64 KiB of meta), and under the 65,535 placeholders
	// of a statement prepared on the server (without interpolateParams).
	for chunk := range slices.Chunk(rowsOfKeys, importChunk/10) {
		err := exec(ctx, tx, "import keys", `INSERT INTO keystore_keys (`+names+`) VALUES `+rows(len(chunk), len(chunk[0])),
			slices.Concat(chunk...)...)
		if IsDuplicateKey(err) { // a concurrent import of one of the hashes committed first
			return nil, invalid("Hash", "is stored already: a concurrent import wrote it")
		}
		if err != nil {
			return nil, err
		}
	}
	for i, table := range []string{"keystore_key_permissions (key_id, permission_id)", "keystore_key_roles (key_id, role_id)"} {
		for chunk := range slices.Chunk(links[i], 2*importChunk) {
			if err := exec(ctx, tx, "link imported keys", `INSERT INTO `+table+` VALUES `+rows(len(chunk)/2, 2), chunk...); err != nil {
				return nil, err
			}
		}
	}
	if len(withRoles) > 0 {
		if err := liftAggregateLimit(ctx, tx); err != nil {
			return nil, err
		}
		if err := exec(ctx, tx, "refresh imported keys' sets", `UPDATE keystore_keys k SET `+setsFromLinks+
			` WHERE k.id IN (`+placeholders(len(withRoles))+`)`, withRoles...); err != nil {
			return nil, err
		}
	}
	for _, ws := range slices.Sorted(maps.Keys(events)) {
		if err := s.writeTrail(ctx, tx, now, ws, events[ws]...); err != nil {
			return nil, err
		}
	}
	return created, nil
}

// refuseStoredHashes returns a *ValidationError naming the Hash of the
// first key whose hash is stored already, as a key's or a rerolled key's
// old one.
func refuseStoredHashes(ctx context.Context, tx *sqlx.Tx, keys []importing, fieldFormat string) error {
	hashes := make([]any, len(keys))
	for i, k := range keys {
		hashes[i] = k.hash
	}
	in := `hash IN (` + placeholders(len(keys)) + `)`
	var found [][]byte
	if err := tx.SelectContext(ctx, &found, `SELECT hash FROM keystore_keys WHERE `+in+
		` UNION ALL SELECT hash FROM keystore_old_hashes WHERE `+in, append(hashes, hashes...)...); err != nil {
		return fmt.Errorf("keystore: look for stored hashes: %w", err)
	}
	for i, k := range keys {
		if slices.ContainsFunc(found, func(h []byte) bool { return string(h) == string(k.hash) }) {
			return indexed(fieldFormat, i, invalid("Hash", "is stored already"))
		}
	}
	return nil
}

// importOwners finds or creates the owner of every key that names one, as
// CreateKey does, for the whole batch at once: per workspace, one INSERT
// IGNORE of the owners in external id order (it waits for a racing creator
// to commit, then skips the rows that exist, taking only shared locks) and
// one locking read of them all, which sees what racing transactions
// committed. An owner deleted in between is a concurrent change: the
// transaction runs again.
func importOwners(ctx context.Context, tx *sqlx.Tx, keys []importing, now time.Time) error {
	byWorkspace := map[string][]string{}
	for _, k := range keys {
		if k.req.ExternalID != "" {
			byWorkspace[k.req.WorkspaceID] = append(byWorkspace[k.req.WorkspaceID], k.req.ExternalID)
		}
	}
	for _, ws := range slices.Sorted(maps.Keys(byWorkspace)) {
		externalIDs := sortedUnique(byWorkspace[ws])
		newIDs := make(map[string]string, len(externalIDs))
		args := make([]any, 0, 5*len(externalIDs))
		for _, ext := range externalIDs {
			newIDs[ext] = newID("id")
			args = append(args, newIDs[ext], ws, ext, utc(now), utc(now))
		}
		if err := exec(ctx, tx, "create owners", `INSERT IGNORE INTO keystore_identities
			(id, workspace_id, external_id, live, created_at, updated_at) VALUES `+
			strings.Repeat("(?, ?, ?, 1, ?, ?), ", len(externalIDs)-1)+"(?, ?, ?, 1, ?, ?)", args...); err != nil {
			return err
		}
		res, err := tx.QueryxContext(ctx, `SELECT id, external_id, meta, ratelimits FROM keystore_identities
			WHERE workspace_id = ? AND external_id IN (`+placeholders(len(externalIDs))+`) AND live = 1
			LOCK IN SHARE MODE`, append([]any{ws}, anys(externalIDs)...)...)
		if err != nil {
			return fmt.Errorf("keystore: read owners: %w", err)
		}
		found := make(map[string]identityRow, len(externalIDs))
		for res.Next() {
			r := identityRow{WorkspaceID: ws}
			if err := res.Scan(&r.ID, &r.ExternalID, &r.rawMeta, &r.rawRatelimits); err != nil {
				res.Close()
				return fmt.Errorf("keystore: read owners: %w", err)
			}
			r.created = r.ID == newIDs[r.ExternalID]
			found[r.ExternalID] = r
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("keystore: read owners: %w", err)
		}
		for i := range keys {
			k := &keys[i]
			if k.req.WorkspaceID != ws || k.req.ExternalID == "" {
				continue
			}
			identity, ok := found[k.req.ExternalID]
			if !ok {
				return fmt.Errorf("keystore: owner %q deleted during an import: %w", k.req.ExternalID, errConcurrentChange)
			}
			k.identity = identity
		}
	}
	return nil
}

// readIDs reads into ids the id of every row of names in workspaceID, under
// a shared lock, in name order; query selects the name and the id from the
// table, nameColumn names the name (constants of the callers, never input).
func readIDs(ctx context.Context, tx *sqlx.Tx, ids map[string]string, query, workspaceID, nameColumn string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	res, err := tx.QueryContext(ctx, query+` WHERE workspace_id = ? AND `+nameColumn+` IN (`+placeholders(len(names))+`)
		ORDER BY `+nameColumn+` LOCK IN SHARE MODE`, append([]any{workspaceID}, anys(names)...)...)
	if err != nil {
		return fmt.Errorf("keystore: read ids: %w", err)
	}
	defer res.Close()
	for res.Next() {
		var name, id string
		if err := res.Scan(&name, &id); err != nil {
			return fmt.Errorf("keystore: read ids: %w", err)
		}
		ids[name] = id
	}
	return res.Err()
}
