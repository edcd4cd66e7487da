package keystore

import "time"

// RefillInterval says how often a key's credits are refilled.
type RefillInterval string

const (
	RefillDaily   RefillInterval = "daily"   // at 00:00 UTC every day, by the Store's clock
	RefillMonthly RefillInterval = "monthly" // at 00:00 UTC on Refill.Day of every month
)

// Credits limits how many times a key can be used. A nil *Credits means
// unlimited.
type Credits struct {
	Remaining int64   // credits left, never negative; a read counts a refill that is due
	Refill    *Refill // nil: never refilled
}

// Refill sets Remaining to Amount once per Interval (also when more was
// left: credits do not accumulate). Day (1..31) is the
// day of the month of a monthly refill, clamped to the month's last day; a
// daily refill must leave it 0.
type Refill struct {
	Interval RefillInterval // RefillDaily or RefillMonthly
	Amount   int64          // what Remaining is set to; at least 1
	Day      int            // 1..31 for RefillMonthly, 0 for RefillDaily
}

// Ratelimit is a named limit of Limit tokens per Duration attached to a key
// or to an identity (then shared by all its keys). VerifyKey enforces it
// when it is AutoApply (one token a call) or requested by name
// (VerifyKeyRequest.Ratelimits), in fixed windows of Duration counted from
// the Unix epoch, with the database as the authority: never more than Limit
// in a window, across all Stores. Duration is at least a second and stored
// in milliseconds: a finer one is invalid input rather than silently cut.
type Ratelimit struct {
	Name      string        // 1..128 characters, not ending in a space; unique within a set
	Limit     int64         // tokens per window; 1..2^53
	Duration  time.Duration // the window: at least a second, in whole milliseconds
	AutoApply bool          // applied to every verification at cost 1; otherwise only when requested
}

// CreateKeyRequest describes a key to create. WorkspaceID and KeySpaceID are
// required; every other field is optional.
type CreateKeyRequest struct {
	WorkspaceID string // 1..255 characters, not ending in a space
	KeySpaceID  string // 1..255 characters, not ending in a space
	Prefix      string // at most 16 of [A-Za-z0-9_]; if set, the key starts with Prefix + "_"
	ByteLength  int    // random bytes in the key: 0 means 16, otherwise 16..255
	ExternalID  string // owner; its identity is found or created atomically
	Name        string // at most 255 characters; "" for none
	// Meta is stored as JSON and read back as encoding/json decodes it
	// into a map[string]any (numbers as float64). It must read back
	// exactly: at most 100 entries, 64 KiB encoded and 100 levels deep,
	// with valid UTF-8 keys and strings and numbers a float64 holds.
	Meta        map[string]any
	Expires     *time.Time  // nil: never expires; must not be in the past
	Credits     *Credits    // nil: unlimited
	Ratelimits  []Ratelimit // at most 50, names unique
	Permissions []string    // slugs; missing ones are created
	Roles       []string    // names; each must already exist
	Disabled    bool        // create the key disabled
}

// CreatedKey is the result of CreateKey. Key is the plaintext, returned only
// here: the store keeps a SHA-256 hash of it.
type CreatedKey struct {
	KeyID      string // the id GetKey, UpdateKey and DeleteKey take
	Key        string // the plaintext
	IdentityID string // "" when the request had no ExternalID
}

// UpdateKeyRequest changes the fields that are Present; the others stay as
// they are. Ratelimits, Permissions and Roles replace the whole set; for
// them Null and Set of an empty slice both clear.
type UpdateKeyRequest struct {
	WorkspaceID string                // required: the key's workspace
	KeyID       string                // required: CreatedKey.KeyID
	Name        Field[string]         // Set a non-empty name of at most 255 characters; Null clears
	ExternalID  Field[string]         // Set links the found-or-created identity; Null unlinks
	Meta        Field[map[string]any] // Set replaces the whole map (limits as on create); Null clears
	Expires     Field[time.Time]      // Set must not be in the past; Null: never expires
	Credits     Field[Credits]        // Null means unlimited
	Ratelimits  Field[[]Ratelimit]    // limits as on create
	Permissions Field[[]string]       // the direct permissions; those of roles stay
	Roles       Field[[]string]       // names; each must already exist
	Enabled     Field[bool]           // Null is invalid

	// Deltas, applied under the key's lock, so that concurrent ones all
	// take effect whatever their order. Each list may not be combined with
	// the Field that replaces its whole set, nor name an entry its
	// counterpart names.
	AddPermissions    []string // slugs to add; missing ones are created
	RemovePermissions []string // slugs to take away; ones the key lacks are ignored
	AddRoles          []string // role names to add; each must exist
	RemoveRoles       []string // role names to take away; each must exist
	// AddCredits > 0 adds credits, < 0 takes them away, stopping at 0 (a
	// refill that is due is applied first). The key must have credits, and
	// Credits must not be given too.
	AddCredits int64
}

// RerollKeyRequest replaces a key's secret; see [Store.RerollKey].
type RerollKeyRequest struct {
	WorkspaceID, KeyID string
	Grace              time.Duration // how long the old key keeps verifying; 0: it stops now; never negative
	ByteLength         int           // random bytes in the new key: 0 means 16, otherwise 16..255
}

// Key is a stored key, without its secret.
type Key struct {
	ID          string         // CreatedKey.KeyID
	WorkspaceID string         // as created
	KeySpaceID  string         // as created
	Start       string         // the first characters of the plaintext, safe to show
	Name        string         // "" when none
	IdentityID  string         // "" when the key has no owner
	ExternalID  string         // the owner's; "" when the key has no owner
	Meta        map[string]any // nil when none; numbers read back as float64
	Expires     *time.Time     // nil: never expires
	Credits     *Credits       // nil: unlimited
	Ratelimits  []Ratelimit    // sorted by name
	// Permissions is the merged set: the key's direct permissions and those
	// of its roles, sorted, without duplicates. UpdateKeyRequest.Permissions
	// replaces only the direct ones.
	Permissions []string
	Roles       []string  // sorted
	Enabled     bool      // false: VerifyKey answers CodeDisabled
	CreatedAt   time.Time // UTC, to the microsecond, by the Store's clock
	UpdatedAt   time.Time // last change by UpdateKey or to one of its roles; VerifyKey leaves it
}

// Identity is the owner of keys, named by the caller's ExternalID, unique
// among live identities of a workspace.
type Identity struct {
	ID          string         // made by keystore; an identity created again gets a new one
	WorkspaceID string         // as given
	ExternalID  string         // the caller's id of the owner
	Meta        map[string]any // nil when none; returned by VerifyKey as IdentityMeta
	Ratelimits  []Ratelimit    // sorted by name; returned by VerifyKey with the key's
	CreatedAt   time.Time      // UTC, to the microsecond, by the Store's clock
	UpdatedAt   time.Time      // last UpdateIdentity; CreatedAt until then
}

// UpdateIdentityRequest changes the Present fields of the live identity of
// ExternalID. Ratelimits replaces the whole set.
type UpdateIdentityRequest struct {
	WorkspaceID string                // required
	ExternalID  string                // required: names the live identity; never creates one
	Meta        Field[map[string]any] // Set replaces the whole map (limits as CreateKeyRequest.Meta); Null clears
	Ratelimits  Field[[]Ratelimit]    // Null or Set of an empty slice clears; limits as on keys
}

// Role is a named set of permissions that keys can hold.
type Role struct {
	ID          string    // made by keystore; a role created again after DeleteRole gets a new one
	WorkspaceID string    // as given
	Name        string    // unique in the workspace; 1..255 characters, not ending in a space
	Permissions []string  // sorted
	CreatedAt   time.Time // UTC; CreateRole on an existing role leaves it
}

// Page is one page of a listing, in a stable order (creation order).
type Page[T any] struct {
	Items []T // at most the request's page size
	// NextCursor, passed as the next request's Cursor, continues the
	// listing; it is "" on the last page.
	NextCursor string
}

// Paging limits of the List methods.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ListKeysRequest lists the live keys of a key space, or of an identity when
// ExternalID is set (then KeySpaceID may be empty, to list all its keys).
type ListKeysRequest struct {
	WorkspaceID string // required
	KeySpaceID  string // required unless ExternalID is set
	ExternalID  string // "" or an owner: only the keys of its live identity
	Cursor      string // "" for the first page
	Limit       int    // 0 means DefaultPageSize; at most MaxPageSize
}

// ListIdentitiesRequest lists the live identities of a workspace.
type ListIdentitiesRequest struct {
	WorkspaceID string // required
	Cursor      string // "" for the first page
	Limit       int    // 0 means DefaultPageSize; at most MaxPageSize
}

// ListAuditEventsRequest lists the audit events of a workspace, oldest
// first, optionally only those about one key, identity or role.
type ListAuditEventsRequest struct {
	WorkspaceID string // required
	KeyID       string // "" or a key id: only events naming that key
	IdentityID  string // "" or an identity id: only events naming that identity
	RoleID      string // "" or a role id: only events naming that role
	Cursor      string // "" for the first page
	Limit       int    // 0 means DefaultPageSize; at most MaxPageSize
}
