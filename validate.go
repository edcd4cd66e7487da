package keystore

import (
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits enforced by validation. Character limits count runes, matching the
// VARCHAR(n) columns of the schema, which count characters.
const (
	limitIDChars            = 255 // WorkspaceID, KeySpaceID, KeyID, ExternalID
	limitNameChars          = 255 // key Name and role names
	limitPrefixChars        = 16
	limitMinByteLength      = 16
	limitMaxByteLength      = 255
	limitRatelimits         = 50
	limitRatelimitNameChars = 128
	limitMinRatelimitPeriod = time.Second
	limitPermissions        = 1000
	limitSlugChars          = 128
	limitRoles              = 100
	// limitTokens bounds a ratelimit's Limit and a request's Cost, so that
	// counting tokens cannot overflow a BIGINT.
	limitTokens = 1 << 53
)

// validate checks r without any I/O and returns nil or the first failure as
// a *ValidationError (which matches ErrInvalidInput). now is the instant an
// Expires must not precede.
func (r *CreateKeyRequest) validate(now time.Time) error {
	if err := validateID("WorkspaceID", r.WorkspaceID, limitIDChars); err != nil {
		return err
	}
	if err := validateID("KeySpaceID", r.KeySpaceID, limitIDChars); err != nil {
		return err
	}
	if err := validatePrefix("Prefix", r.Prefix); err != nil {
		return err
	}
	if err := validateByteLength("ByteLength", r.ByteLength); err != nil {
		return err
	}
	// "" means no owner; anything else must be a valid 1..255 character id.
	if r.ExternalID != "" {
		if err := validateID("ExternalID", r.ExternalID, limitIDChars); err != nil {
			return err
		}
	}
	if err := validateText("Name", r.Name, limitNameChars); err != nil {
		return err
	}
	if err := validateMeta("Meta", r.Meta); err != nil {
		return err
	}
	if r.Expires != nil {
		if err := validateExpires("Expires", *r.Expires, now); err != nil {
			return err
		}
	}
	if r.Credits != nil {
		if err := validateCredits("Credits", *r.Credits); err != nil {
			return err
		}
	}
	if err := validateRatelimits("Ratelimits", r.Ratelimits); err != nil {
		return err
	}
	if err := validatePermissions("Permissions", r.Permissions); err != nil {
		return err
	}
	return validateRoles("Roles", r.Roles)
}

// validate checks r without any I/O and returns nil or the first failure as
// a *ValidationError (which matches ErrInvalidInput). Each Present field is
// held to the same rules as the matching CreateKeyRequest field; Null is
// accepted everywhere except Enabled.
func (r *UpdateKeyRequest) validate(now time.Time) error {
	if err := validateID("WorkspaceID", r.WorkspaceID, limitIDChars); err != nil {
		return err
	}
	if err := validateRefID("KeyID", r.KeyID); err != nil {
		return err
	}
	if v, ok := r.Name.Value(); ok {
		if v == "" {
			return invalid("Name", "must not be empty (use Null to clear)")
		}
		if err := validateText("Name", v, limitNameChars); err != nil {
			return err
		}
	}
	if v, ok := r.ExternalID.Value(); ok {
		if v == "" {
			return invalid("ExternalID", "must not be empty (use Null to unlink)")
		}
		if err := validateID("ExternalID", v, limitIDChars); err != nil {
			return err
		}
	}
	if v, ok := r.Meta.Value(); ok {
		if err := validateMeta("Meta", v); err != nil {
			return err
		}
	}
	if v, ok := r.Expires.Value(); ok {
		if err := validateExpires("Expires", v, now); err != nil {
			return err
		}
	}
	if v, ok := r.Credits.Value(); ok {
		if err := validateCredits("Credits", v); err != nil {
			return err
		}
	}
	if v, ok := r.Ratelimits.Value(); ok {
		if err := validateRatelimits("Ratelimits", v); err != nil {
			return err
		}
	}
	if v, ok := r.Permissions.Value(); ok {
		if err := validatePermissions("Permissions", v); err != nil {
			return err
		}
	}
	if v, ok := r.Roles.Value(); ok {
		if err := validateRoles("Roles", v); err != nil {
			return err
		}
	}
	if r.Enabled.IsNull() {
		return invalid("Enabled", "must not be null (use Set(true) or Set(false))")
	}
	if err := validateDeltas(r.Permissions.Present(), "Permissions", r.AddPermissions, r.RemovePermissions, validatePermissions); err != nil {
		return err
	}
	if err := validateDeltas(r.Roles.Present(), "Roles", r.AddRoles, r.RemoveRoles, validateRoles); err != nil {
		return err
	}
	if r.AddCredits != 0 && r.Credits.Present() {
		return invalid("AddCredits", "cannot be combined with Credits, which sets the balance")
	}
	return nil
}

// validateDeltas checks the Add and Remove lists of the set named field:
// each as the set itself is checked, not with the whole set replaced too
// (replacing is true), and no entry in both.
func validateDeltas(replacing bool, field string, add, remove []string, check func(string, []string) error) error {
	addField, removeField := "Add"+field, "Remove"+field
	if replacing && len(add)+len(remove) > 0 {
		name := addField
		if len(add) == 0 {
			name = removeField
		}
		return invalid(name, "cannot be combined with %s, which replaces the whole set", field)
	}
	if err := check(addField, add); err != nil {
		return err
	}
	if err := check(removeField, remove); err != nil {
		return err
	}
	for i, v := range remove {
		if slices.Contains(add, v) {
			return invalid(removeField+"["+strconv.Itoa(i)+"]", "%q is also in %s", v, addField)
		}
	}
	return nil
}

// validateText checks an optional string: valid UTF-8, no NUL bytes and at
// most maxChars characters (runes). The empty string passes.
func validateText(field, s string, maxChars int) error {
	if !utf8.ValidString(s) {
		return invalid(field, "must be valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid(field, "must not contain NUL bytes")
	}
	// A string of at most maxChars bytes has at most maxChars runes, so
	// only longer ones need counting.
	if len(s) > maxChars && utf8.RuneCountInString(s) > maxChars {
		return invalid(field, "must be at most %d characters", maxChars)
	}
	return nil
}

// validateName checks a required string: like validateText, and not empty.
func validateName(field, s string, maxChars int) error {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	return validateText(field, s, maxChars)
}

// validateID checks a required identifier or unique name: like validateName,
// and not ending in a space. The schema's utf8mb4_bin collation (the binary
// collation MariaDB and MySQL share) pads with spaces, so "a" and "a " would
// be the same identity, role or ratelimit; rejecting trailing spaces keeps
// every stored identifier byte-exact.
func validateID(field, s string, maxChars int) error {
	if err := validateName(field, s, maxChars); err != nil {
		return err
	}
	if strings.HasSuffix(s, " ") {
		return invalid(field, "must not end with a space")
	}
	return nil
}

// validateRefID checks an id this package made (a key, identity or role id):
// "prefix_hex", at most 64 characters of [A-Za-z0-9_]. Anything else names
// nothing, and would only reach the ASCII id columns as a collation error.
func validateRefID(field, s string) error {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	if len(s) > 64 {
		return invalid(field, "is not an id made by keystore (too long)")
	}
	for i := 0; i < len(s); i++ {
		if !isPrefixByte(s[i]) {
			return invalid(field, "is not an id made by keystore")
		}
	}
	return nil
}

// validatePrefix checks an optional key prefix: at most 16 of [A-Za-z0-9_].
func validatePrefix(field, s string) error {
	if err := validateText(field, s, limitPrefixChars); err != nil {
		return err
	}
	for i := 0; i < len(s); i++ {
		if !isPrefixByte(s[i]) {
			return invalid(field, "must match [A-Za-z0-9_]")
		}
	}
	return nil
}

// validateByteLength accepts 0 (the default, 16) or 16..255.
func validateByteLength(field string, n int) error {
	if n != 0 && (n < limitMinByteLength || n > limitMaxByteLength) {
		return invalid(field, "must be 0 (default) or %d..%d", limitMinByteLength, limitMaxByteLength)
	}
	return nil
}

// validateExpires rejects an expiry before now; exactly now is accepted.
func validateExpires(field string, t, now time.Time) error {
	if t.Before(now) {
		return invalid(field, "must not be in the past")
	}
	if t.UTC().Year() > 9999 {
		return invalid(field, "must be before the year 10000")
	}
	return nil
}

// validateCredits checks c; field is the name of the Credits field itself,
// and failures name its sub-fields ("Credits.Refill.Day").
func validateCredits(field string, c Credits) error {
	if c.Remaining < 0 {
		return invalid(field+".Remaining", "must not be negative")
	}
	if c.Refill == nil {
		return nil
	}
	rf := field + ".Refill"
	r := c.Refill
	switch r.Interval {
	case RefillDaily, RefillMonthly:
	default:
		return invalid(rf+".Interval", "must be %q or %q", RefillDaily, RefillMonthly)
	}
	if r.Amount < 1 {
		return invalid(rf+".Amount", "must be at least 1")
	}
	if r.Interval == RefillMonthly && (r.Day < 1 || r.Day > 31) {
		return invalid(rf+".Day", "must be 1..31 for a monthly refill")
	}
	if r.Interval == RefillDaily && r.Day != 0 {
		return invalid(rf+".Day", "must be 0 for a daily refill")
	}
	return nil
}

// validateRatelimits checks at most 50 limits, each with a 1..128 character
// name, Limit >= 1 and Duration >= 1s in whole milliseconds (as it is
// stored), names unique within the slice.
func validateRatelimits(field string, rls []Ratelimit) error {
	if len(rls) > limitRatelimits {
		return invalid(field, "must have at most %d entries", limitRatelimits)
	}
	seen := make(map[string]struct{}, len(rls))
	for i, rl := range rls {
		name := field + "[" + strconv.Itoa(i) + "]"
		if err := validateID(name+".Name", rl.Name, limitRatelimitNameChars); err != nil {
			return err
		}
		if _, dup := seen[rl.Name]; dup {
			return invalid(name+".Name", "duplicate name %q", rl.Name)
		}
		seen[rl.Name] = struct{}{}
		if rl.Limit < 1 || rl.Limit > limitTokens {
			return invalid(name+".Limit", "must be 1..2^53")
		}
		if rl.Duration < limitMinRatelimitPeriod {
			return invalid(name+".Duration", "must be at least %s", limitMinRatelimitPeriod)
		}
		if rl.Duration%time.Millisecond != 0 {
			return invalid(name+".Duration", "must be a whole number of milliseconds, not %s", rl.Duration)
		}
	}
	return nil
}

// validatePermissions checks at most 1000 slugs, each 1..128 characters of
// [A-Za-z0-9_:.*/-]. Duplicate slugs are allowed: the store dedupes them.
func validatePermissions(field string, slugs []string) error {
	if len(slugs) > limitPermissions {
		return invalid(field, "must have at most %d entries", limitPermissions)
	}
	for i, s := range slugs {
		name := field + "[" + strconv.Itoa(i) + "]"
		if err := validateName(name, s, limitSlugChars); err != nil {
			return err
		}
		for j := 0; j < len(s); j++ {
			if !isSlugByte(s[j]) {
				return invalid(name, "must match [A-Za-z0-9_:.*/-]")
			}
		}
	}
	return nil
}

// validateRoles checks at most 100 role names, each 1..255 characters.
// Duplicate names are allowed: the store dedupes them.
func validateRoles(field string, roles []string) error {
	if len(roles) > limitRoles {
		return invalid(field, "must have at most %d entries", limitRoles)
	}
	for i, s := range roles {
		if err := validateID(field+"["+strconv.Itoa(i)+"]", s, limitNameChars); err != nil {
			return err
		}
	}
	return nil
}

func isPrefixByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
}

func isSlugByte(c byte) bool {
	if isPrefixByte(c) {
		return true
	}
	switch c {
	case ':', '.', '*', '-', '/':
		return true
	}
	return false
}
