package keystore

import "time"

// RefillInterval says how often a key's credits are refilled.
type RefillInterval string

const (
	RefillDaily   RefillInterval = "daily"
	RefillMonthly RefillInterval = "monthly"
)

// Credits limits how many times a key can be used. A nil *Credits means
// unlimited.
type Credits struct {
	Remaining int64
	Refill    *Refill // nil: never refilled
}

// Refill sets Remaining to Amount once per Interval (also when more was
// left: credits do not accumulate). Day (1..31) is the
// day of the month of a monthly refill, clamped to the month's last day; a
// daily refill must leave it 0.
type Refill struct {
	Interval RefillInterval
	Amount   int64
	Day      int
}

// Ratelimit is a named limit of Limit requests per Duration attached to a
// key. The library stores it; enforcing it is the caller's job. Duration is
// at least a second and stored in milliseconds: a finer one is invalid
// input rather than silently cut.
type Ratelimit struct {
	Name      string
	Limit     int64
	Duration  time.Duration
	AutoApply bool
}

// CreateKeyRequest describes a key to create. WorkspaceID and KeySpaceID are
// required; every other field is optional.
type CreateKeyRequest struct {
	WorkspaceID string
	KeySpaceID  string
	Prefix      string // at most 16 of [A-Za-z0-9_]; the key starts with Prefix + "_"
	ByteLength  int    // random bytes in the key: 0 means 16, otherwise 16..255
	ExternalID  string // owner; its identity is found or created atomically
	Name        string
	// Meta is stored as JSON and read back as encoding/json decodes it
	// into a map[string]any (numbers as float64). It must read back
	// exactly: at most 100 entries, 64 KiB encoded and 100 levels deep,
	// with valid UTF-8 keys and strings and numbers a float64 holds.
	Meta        map[string]any
	Expires     *time.Time
	Credits     *Credits
	Ratelimits  []Ratelimit
	Permissions []string // slugs; missing ones are created
	Roles       []string // names; each must already exist
	Disabled    bool     // create the key disabled
}

// CreatedKey is the result of CreateKey. Key is the plaintext, returned only
// here: the store keeps a SHA-256 hash of it.
type CreatedKey struct {
	KeyID      string
	Key        string
	IdentityID string // "" when the request had no ExternalID
}

// UpdateKeyRequest changes the fields that are Present; the others stay as
// they are. Ratelimits, Permissions and Roles replace the whole set; for
// them Null and Set of an empty slice both clear.
type UpdateKeyRequest struct {
	WorkspaceID string
	KeyID       string
	Name        Field[string]
	ExternalID  Field[string] // Set links the found-or-created identity; Null unlinks
	Meta        Field[map[string]any]
	Expires     Field[time.Time]
	Credits     Field[Credits] // Null means unlimited
	Ratelimits  Field[[]Ratelimit]
	Permissions Field[[]string] // the direct permissions; those of roles stay
	Roles       Field[[]string]
	Enabled     Field[bool] // Null is invalid
}

// Key is a stored key, without its secret.
type Key struct {
	ID          string
	WorkspaceID string
	KeySpaceID  string
	Start       string // the first characters of the plaintext, safe to show
	Name        string
	IdentityID  string // "" when the key has no owner
	ExternalID  string
	Meta        map[string]any
	Expires     *time.Time
	Credits     *Credits // nil: unlimited
	Ratelimits  []Ratelimit
	// Permissions is the merged set: the key's direct permissions and those
	// of its roles, sorted, without duplicates. UpdateKeyRequest.Permissions
	// replaces only the direct ones.
	Permissions []string
	Roles       []string // sorted
	Enabled     bool
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Identity is the owner of keys, named by the caller's ExternalID, unique
// among live identities of a workspace.
type Identity struct {
	ID          string
	WorkspaceID string
	ExternalID  string
	Meta        map[string]any
	Ratelimits  []Ratelimit // sorted by name; returned by VerifyKey with the key's
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// UpdateIdentityRequest changes the Present fields of the live identity of
// ExternalID. Ratelimits replaces the whole set.
type UpdateIdentityRequest struct {
	WorkspaceID string
	ExternalID  string
	Meta        Field[map[string]any]
	Ratelimits  Field[[]Ratelimit]
}

// Role is a named set of permissions that keys can hold.
type Role struct {
	ID          string
	WorkspaceID string
	Name        string
	Permissions []string // sorted
	CreatedAt   time.Time
}

// Page is one page of a listing, in a stable order (creation order).
type Page[T any] struct {
	Items []T
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
	WorkspaceID string
	KeySpaceID  string
	ExternalID  string
	Cursor      string // "" for the first page
	Limit       int    // 0 means DefaultPageSize; at most MaxPageSize
}

// ListIdentitiesRequest lists the live identities of a workspace.
type ListIdentitiesRequest struct {
	WorkspaceID string
	Cursor      string
	Limit       int
}

// ListAuditEventsRequest lists the audit events of a workspace, oldest
// first, optionally only those about one key, identity or role.
type ListAuditEventsRequest struct {
	WorkspaceID string
	KeyID       string
	IdentityID  string
	RoleID      string
	Cursor      string
	Limit       int
}
