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

// Refill tops Remaining up to Amount once per Interval. Day (1..31) is the
// day of the month of a monthly refill, clamped to the month's last day; a
// daily refill must leave it 0.
type Refill struct {
	Interval RefillInterval
	Amount   int64
	Day      int
}

// Ratelimit is a named limit of Limit requests per Duration attached to a
// key. The library stores it; enforcing it is the caller's job.
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
	Permissions Field[[]string]
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
	Permissions []string // sorted
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
	CreatedAt   time.Time
}
