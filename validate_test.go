package keystore

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var validateNow = time.Date(2025, 6, 15, 12, 0, 0, 0, time.UTC)

// validCreateKeyRequest returns a request that sets every field and passes.
func validCreateKeyRequest() CreateKeyRequest {
	exp := validateNow.Add(time.Hour)
	return CreateKeyRequest{
		WorkspaceID: "ws_1",
		KeySpaceID:  "ks_1",
		Prefix:      "sk_live",
		ByteLength:  32,
		ExternalID:  "user-1",
		Name:        "CI key",
		Meta:        map[string]any{"team": "core", "n": 1.5, "tags": []any{"a", "b"}},
		Expires:     &exp,
		Credits: &Credits{
			Remaining: 100,
			Refill:    &Refill{Interval: RefillMonthly, Amount: 100, Day: 31},
		},
		Ratelimits: []Ratelimit{
			{Name: "requests", Limit: 10, Duration: time.Second},
			{Name: "tokens", Limit: 1000, Duration: time.Minute, AutoApply: true},
		},
		Permissions: []string{"api.read", "api:write", "docs.*", "a-b_c", "api.read"},
		Roles:       []string{"admin", "Viewer ñ", "admin"},
		Disabled:    true,
	}
}

func ratelimits(n int) []Ratelimit {
	rls := make([]Ratelimit, n)
	for i := range rls {
		rls[i] = Ratelimit{Name: "rl" + strconv.Itoa(i), Limit: 1, Duration: time.Second}
	}
	return rls
}

func repeated(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func metaEntries(n int) map[string]any {
	m := make(map[string]any, n)
	for i := 0; i < n; i++ {
		m["k"+strconv.Itoa(i)] = i
	}
	return m
}

// checkValidation asserts err is nil when wantField is "", otherwise that it
// is a *ValidationError for wantField matching ErrInvalidInput.
func checkValidation(t *testing.T, err error, wantField string) {
	t.Helper()
	if wantField == "" {
		if err != nil {
			t.Fatalf("want nil error, got %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("want error for field %q, got nil", wantField)
	}
	if !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("errors.Is(%v, ErrInvalidInput) = false", err)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("errors.As(%v, *ValidationError) = false", err)
	}
	if ve.Field != wantField {
		t.Fatalf("Field = %q, want %q (err: %v)", ve.Field, wantField, err)
	}
	if ve.Reason == "" {
		t.Fatalf("empty Reason for field %q", ve.Field)
	}
	if len(err.Error()) > 500 {
		t.Fatalf("error message is %d bytes long: %.100q...", len(err.Error()), err.Error())
	}
}

func TestValidateCreateKeyValidFullRequest(t *testing.T) {
	r := validCreateKeyRequest()
	checkValidation(t, r.validate(validateNow), "")

	minimal := CreateKeyRequest{WorkspaceID: "w", KeySpaceID: "k"}
	checkValidation(t, minimal.validate(validateNow), "")
}

func TestValidateCreateKey(t *testing.T) {
	s := strings.Repeat
	past := validateNow.Add(-time.Nanosecond)
	now := validateNow

	tests := []struct {
		name      string
		mutate    func(r *CreateKeyRequest)
		wantField string // "" means the request must pass
	}{
		// WorkspaceID / KeySpaceID
		{"workspace empty", func(r *CreateKeyRequest) { r.WorkspaceID = "" }, "WorkspaceID"},
		{"workspace 256 chars", func(r *CreateKeyRequest) { r.WorkspaceID = s("w", 256) }, "WorkspaceID"},
		{"workspace 255 chars", func(r *CreateKeyRequest) { r.WorkspaceID = s("w", 255) }, ""},
		{"workspace 255 multibyte chars", func(r *CreateKeyRequest) { r.WorkspaceID = s("é", 255) }, ""},
		{"workspace 256 multibyte chars", func(r *CreateKeyRequest) { r.WorkspaceID = s("é", 256) }, "WorkspaceID"},
		{"workspace 1 MB", func(r *CreateKeyRequest) { r.WorkspaceID = s("w", 1<<20) }, "WorkspaceID"},
		{"workspace invalid utf8", func(r *CreateKeyRequest) { r.WorkspaceID = "ws\xff" }, "WorkspaceID"},
		{"workspace NUL", func(r *CreateKeyRequest) { r.WorkspaceID = "ws\x00" }, "WorkspaceID"},
		{"workspace SQL metachars", func(r *CreateKeyRequest) { r.WorkspaceID = "'; DROP TABLE keystore_keys; --" }, ""},
		{"keyspace empty", func(r *CreateKeyRequest) { r.KeySpaceID = "" }, "KeySpaceID"},
		{"keyspace 256 chars", func(r *CreateKeyRequest) { r.KeySpaceID = s("k", 256) }, "KeySpaceID"},
		{"keyspace 255 chars", func(r *CreateKeyRequest) { r.KeySpaceID = s("k", 255) }, ""},
		{"keyspace invalid utf8", func(r *CreateKeyRequest) { r.KeySpaceID = "\xc3\x28" }, "KeySpaceID"},
		{"keyspace NUL", func(r *CreateKeyRequest) { r.KeySpaceID = "\x00" }, "KeySpaceID"},

		// Prefix
		{"prefix empty", func(r *CreateKeyRequest) { r.Prefix = "" }, ""},
		{"prefix 16 chars", func(r *CreateKeyRequest) { r.Prefix = "Az09_" + s("x", 11) }, ""},
		{"prefix 17 chars", func(r *CreateKeyRequest) { r.Prefix = s("p", 17) }, "Prefix"},
		{"prefix dash", func(r *CreateKeyRequest) { r.Prefix = "sk-live" }, "Prefix"},
		{"prefix space", func(r *CreateKeyRequest) { r.Prefix = "sk live" }, "Prefix"},
		{"prefix non-ascii", func(r *CreateKeyRequest) { r.Prefix = "clé" }, "Prefix"},
		{"prefix invalid utf8", func(r *CreateKeyRequest) { r.Prefix = "\xff" }, "Prefix"},
		{"prefix NUL", func(r *CreateKeyRequest) { r.Prefix = "a\x00" }, "Prefix"},

		// ByteLength
		{"byte length 0", func(r *CreateKeyRequest) { r.ByteLength = 0 }, ""},
		{"byte length 16", func(r *CreateKeyRequest) { r.ByteLength = 16 }, ""},
		{"byte length 255", func(r *CreateKeyRequest) { r.ByteLength = 255 }, ""},
		{"byte length 15", func(r *CreateKeyRequest) { r.ByteLength = 15 }, "ByteLength"},
		{"byte length 1", func(r *CreateKeyRequest) { r.ByteLength = 1 }, "ByteLength"},
		{"byte length 256", func(r *CreateKeyRequest) { r.ByteLength = 256 }, "ByteLength"},
		{"byte length negative", func(r *CreateKeyRequest) { r.ByteLength = -16 }, "ByteLength"},

		// ExternalID
		{"external id empty", func(r *CreateKeyRequest) { r.ExternalID = "" }, ""},
		{"external id 255 chars", func(r *CreateKeyRequest) { r.ExternalID = s("e", 255) }, ""},
		{"external id 256 chars", func(r *CreateKeyRequest) { r.ExternalID = s("e", 256) }, "ExternalID"},
		{"external id invalid utf8", func(r *CreateKeyRequest) { r.ExternalID = "u\xed\xa0\x80" }, "ExternalID"}, // surrogate
		{"external id NUL", func(r *CreateKeyRequest) { r.ExternalID = "u\x001" }, "ExternalID"},

		// Name
		{"name empty", func(r *CreateKeyRequest) { r.Name = "" }, ""},
		{"name 255 chars", func(r *CreateKeyRequest) { r.Name = s("n", 255) }, ""},
		{"name 255 emoji", func(r *CreateKeyRequest) { r.Name = s("🔑", 255) }, ""},
		{"name 256 chars", func(r *CreateKeyRequest) { r.Name = s("n", 256) }, "Name"},
		{"name 1 MB", func(r *CreateKeyRequest) { r.Name = s("n", 1<<20) }, "Name"},
		{"name invalid utf8", func(r *CreateKeyRequest) { r.Name = "bad \xfe name" }, "Name"},
		{"name NUL", func(r *CreateKeyRequest) { r.Name = "\x00" }, "Name"},

		// Meta
		{"meta nil", func(r *CreateKeyRequest) { r.Meta = nil }, ""},
		{"meta 100 entries", func(r *CreateKeyRequest) { r.Meta = metaEntries(100) }, ""},
		{"meta 101 entries", func(r *CreateKeyRequest) { r.Meta = metaEntries(101) }, "Meta"},
		// {"k":"<v>"} is 8 bytes of JSON around v.
		{"meta exactly 64 KiB", func(r *CreateKeyRequest) { r.Meta = map[string]any{"k": s("v", 64<<10-8)} }, ""},
		{"meta 64 KiB + 1", func(r *CreateKeyRequest) { r.Meta = map[string]any{"k": s("v", 64<<10-7)} }, "Meta"},
		{"meta channel", func(r *CreateKeyRequest) { r.Meta = map[string]any{"c": make(chan int)} }, "Meta"},
		{"meta NaN", func(r *CreateKeyRequest) { r.Meta = map[string]any{"x": math.NaN()} }, "Meta"},
		{"meta nested Inf", func(r *CreateKeyRequest) { r.Meta = map[string]any{"x": []any{math.Inf(1)}} }, "Meta"},
		{"meta func", func(r *CreateKeyRequest) { r.Meta = map[string]any{"f": func() {}} }, "Meta"},
		{"meta invalid utf8 key", func(r *CreateKeyRequest) { r.Meta = map[string]any{"\xff": 1} }, "Meta"},

		// Expires
		{"expires nil", func(r *CreateKeyRequest) { r.Expires = nil }, ""},
		{"expires now", func(r *CreateKeyRequest) { r.Expires = &now }, ""},
		{"expires 1ns ago", func(r *CreateKeyRequest) { r.Expires = &past }, "Expires"},
		{"expires in year 10000", func(r *CreateKeyRequest) {
			far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
			r.Expires = &far
		}, "Expires"},

		// Credits
		{"credits nil", func(r *CreateKeyRequest) { r.Credits = nil }, ""},
		{"credits zero remaining", func(r *CreateKeyRequest) { r.Credits = &Credits{Remaining: 0} }, ""},
		{"credits negative remaining", func(r *CreateKeyRequest) { r.Credits = &Credits{Remaining: -1} }, "Credits.Remaining"},
		{"refill bad interval", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: "weekly", Amount: 1}}
		}, "Credits.Refill.Interval"},
		{"refill empty interval", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Amount: 1}}
		}, "Credits.Refill.Interval"},
		{"refill amount 0", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillDaily, Amount: 0}}
		}, "Credits.Refill.Amount"},
		{"refill daily amount 1", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillDaily, Amount: 1}}
		}, ""},
		{"refill daily with day", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillDaily, Amount: 1, Day: 1}}
		}, "Credits.Refill.Day"},
		{"refill monthly day 0", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillMonthly, Amount: 1}}
		}, "Credits.Refill.Day"},
		{"refill monthly day 1", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillMonthly, Amount: 1, Day: 1}}
		}, ""},
		{"refill monthly day 31", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillMonthly, Amount: 1, Day: 31}}
		}, ""},
		{"refill monthly day 32", func(r *CreateKeyRequest) {
			r.Credits = &Credits{Refill: &Refill{Interval: RefillMonthly, Amount: 1, Day: 32}}
		}, "Credits.Refill.Day"},

		// Ratelimits
		{"ratelimits nil", func(r *CreateKeyRequest) { r.Ratelimits = nil }, ""},
		{"ratelimits 50", func(r *CreateKeyRequest) { r.Ratelimits = ratelimits(50) }, ""},
		{"ratelimits 51", func(r *CreateKeyRequest) { r.Ratelimits = ratelimits(51) }, "Ratelimits"},
		{"ratelimit empty name", func(r *CreateKeyRequest) { r.Ratelimits[1].Name = "" }, "Ratelimits[1].Name"},
		{"ratelimit name 128 chars", func(r *CreateKeyRequest) { r.Ratelimits[1].Name = s("r", 128) }, ""},
		{"ratelimit name 129 chars", func(r *CreateKeyRequest) { r.Ratelimits[1].Name = s("r", 129) }, "Ratelimits[1].Name"},
		{"ratelimit name invalid utf8", func(r *CreateKeyRequest) { r.Ratelimits[0].Name = "\x80" }, "Ratelimits[0].Name"},
		{"ratelimit name NUL", func(r *CreateKeyRequest) { r.Ratelimits[0].Name = "a\x00" }, "Ratelimits[0].Name"},
		{"ratelimit limit 0", func(r *CreateKeyRequest) { r.Ratelimits[1].Limit = 0 }, "Ratelimits[1].Limit"},
		{"ratelimit limit negative", func(r *CreateKeyRequest) { r.Ratelimits[0].Limit = -5 }, "Ratelimits[0].Limit"},
		{"ratelimit duration 1s-1ns", func(r *CreateKeyRequest) {
			r.Ratelimits[1].Duration = time.Second - time.Nanosecond
		}, "Ratelimits[1].Duration"},
		{"ratelimit duration 0", func(r *CreateKeyRequest) { r.Ratelimits[0].Duration = 0 }, "Ratelimits[0].Duration"},
		{"ratelimit duration with a fraction of a millisecond", func(r *CreateKeyRequest) {
			r.Ratelimits[0].Duration = time.Second + time.Microsecond
		}, "Ratelimits[0].Duration"},
		{"ratelimit duplicate name", func(r *CreateKeyRequest) {
			r.Ratelimits = ratelimits(3)
			r.Ratelimits[2].Name = r.Ratelimits[0].Name
		}, "Ratelimits[2].Name"},
		{"ratelimit name with trailing space", func(r *CreateKeyRequest) {
			r.Ratelimits = ratelimits(3)
			r.Ratelimits[2].Name = r.Ratelimits[1].Name + "  "
		}, "Ratelimits[2].Name"},
		{"workspace id with trailing space", func(r *CreateKeyRequest) { r.WorkspaceID = "ws " }, "WorkspaceID"},
		{"external id with trailing space", func(r *CreateKeyRequest) { r.ExternalID = "user1 " }, "ExternalID"},
		{"external id with leading space", func(r *CreateKeyRequest) { r.ExternalID = " user1" }, ""},
		{"role with trailing space", func(r *CreateKeyRequest) { r.Roles = []string{"admin "} }, "Roles[0]"},
		{"ratelimit names differ only in case", func(r *CreateKeyRequest) {
			r.Ratelimits = []Ratelimit{
				{Name: "rps", Limit: 1, Duration: time.Second},
				{Name: "RPS", Limit: 1, Duration: time.Second},
			}
		}, ""},

		// Permissions
		{"permissions nil", func(r *CreateKeyRequest) { r.Permissions = nil }, ""},
		{"permissions 1000", func(r *CreateKeyRequest) { r.Permissions = repeated("api.read", 1000) }, ""},
		{"permissions 1001", func(r *CreateKeyRequest) { r.Permissions = repeated("api.read", 1001) }, "Permissions"},
		{"permission empty", func(r *CreateKeyRequest) { r.Permissions[3] = "" }, "Permissions[3]"},
		{"permission 128 chars", func(r *CreateKeyRequest) { r.Permissions[0] = s("p", 128) }, ""},
		{"permission 129 chars", func(r *CreateKeyRequest) { r.Permissions[0] = s("p", 129) }, "Permissions[0]"},
		{"permission every allowed byte", func(r *CreateKeyRequest) {
			r.Permissions = []string{"azAZ09_:.*-"}
		}, ""},
		{"permission space", func(r *CreateKeyRequest) { r.Permissions[4] = "api read" }, "Permissions[4]"},
		{"permission slash", func(r *CreateKeyRequest) { r.Permissions[1] = "api/read" }, ""}, // "/" may appear in a permission query too
		{"permission backslash", func(r *CreateKeyRequest) { r.Permissions[1] = `api\\read` }, "Permissions[1]"},
		{"permission quote", func(r *CreateKeyRequest) { r.Permissions[1] = "api'--" }, "Permissions[1]"},
		{"permission non-ascii", func(r *CreateKeyRequest) { r.Permissions[2] = "lé" }, "Permissions[2]"},
		{"permission invalid utf8", func(r *CreateKeyRequest) { r.Permissions[2] = "\xff" }, "Permissions[2]"},
		{"permission NUL", func(r *CreateKeyRequest) { r.Permissions[2] = "a\x00" }, "Permissions[2]"},
		{"permission duplicates allowed", func(r *CreateKeyRequest) { r.Permissions = []string{"a", "a", "a"} }, ""},

		// Roles
		{"roles nil", func(r *CreateKeyRequest) { r.Roles = nil }, ""},
		{"roles 100", func(r *CreateKeyRequest) { r.Roles = repeated("admin", 100) }, ""},
		{"roles 101", func(r *CreateKeyRequest) { r.Roles = repeated("admin", 101) }, "Roles"},
		{"role empty", func(r *CreateKeyRequest) { r.Roles[0] = "" }, "Roles[0]"},
		{"role 255 chars", func(r *CreateKeyRequest) { r.Roles[0] = s("r", 255) }, ""},
		{"role 256 chars", func(r *CreateKeyRequest) { r.Roles[2] = s("r", 256) }, "Roles[2]"},
		{"role invalid utf8", func(r *CreateKeyRequest) { r.Roles[1] = "\xff" }, "Roles[1]"},
		{"role NUL", func(r *CreateKeyRequest) { r.Roles[1] = "ad\x00min" }, "Roles[1]"},
		{"role duplicates allowed", func(r *CreateKeyRequest) { r.Roles = []string{"x", "x"} }, ""},

		// The first failure in field order is reported.
		{"first failure wins", func(r *CreateKeyRequest) {
			r.KeySpaceID = ""
			r.Name = s("n", 300)
			r.Roles = []string{""}
		}, "KeySpaceID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := validCreateKeyRequest()
			tc.mutate(&r)
			checkValidation(t, r.validate(validateNow), tc.wantField)
		})
	}
}

func TestValidateUpdateKey(t *testing.T) {
	s := strings.Repeat
	base := func() UpdateKeyRequest { return UpdateKeyRequest{WorkspaceID: "ws_1", KeyID: "key_1"} }

	tests := []struct {
		name      string
		mutate    func(r *UpdateKeyRequest)
		wantField string // "" means the request must pass
	}{
		{"nothing present", func(r *UpdateKeyRequest) {}, ""},
		{"every field set", func(r *UpdateKeyRequest) {
			full := validCreateKeyRequest()
			r.Name = Set("renamed")
			r.ExternalID = Set("user-2")
			r.Meta = Set(full.Meta)
			r.Expires = Set(validateNow)
			r.Credits = Set(*full.Credits)
			r.Ratelimits = Set(full.Ratelimits)
			r.Permissions = Set(full.Permissions)
			r.Roles = Set(full.Roles)
			r.Enabled = Set(false)
		}, ""},
		{"every nullable field null", func(r *UpdateKeyRequest) {
			r.Name = Null[string]()
			r.ExternalID = Null[string]()
			r.Meta = Null[map[string]any]()
			r.Expires = Null[time.Time]()
			r.Credits = Null[Credits]()
			r.Ratelimits = Null[[]Ratelimit]()
			r.Permissions = Null[[]string]()
			r.Roles = Null[[]string]()
		}, ""},
		{"empty slices clear", func(r *UpdateKeyRequest) {
			r.Ratelimits = Set([]Ratelimit{})
			r.Permissions = Set([]string{})
			r.Roles = Set([]string{})
		}, ""},

		// Required ids
		{"workspace empty", func(r *UpdateKeyRequest) { r.WorkspaceID = "" }, "WorkspaceID"},
		{"workspace 256 chars", func(r *UpdateKeyRequest) { r.WorkspaceID = s("w", 256) }, "WorkspaceID"},
		{"workspace invalid utf8", func(r *UpdateKeyRequest) { r.WorkspaceID = "\xff" }, "WorkspaceID"},
		{"key id empty", func(r *UpdateKeyRequest) { r.KeyID = "" }, "KeyID"},
		{"key id 64 chars", func(r *UpdateKeyRequest) { r.KeyID = s("k", 64) }, ""},
		{"key id 65 chars", func(r *UpdateKeyRequest) { r.KeyID = s("k", 65) }, "KeyID"},
		{"key id not ASCII", func(r *UpdateKeyRequest) { r.KeyID = "kéy" }, "KeyID"},
		{"key id NUL", func(r *UpdateKeyRequest) { r.KeyID = "k\x00" }, "KeyID"},

		// Name
		{"name set empty", func(r *UpdateKeyRequest) { r.Name = Set("") }, "Name"},
		{"name set 255 chars", func(r *UpdateKeyRequest) { r.Name = Set(s("n", 255)) }, ""},
		{"name set 256 chars", func(r *UpdateKeyRequest) { r.Name = Set(s("n", 256)) }, "Name"},
		{"name set invalid utf8", func(r *UpdateKeyRequest) { r.Name = Set("\xff") }, "Name"},
		{"name set NUL", func(r *UpdateKeyRequest) { r.Name = Set("\x00") }, "Name"},

		// ExternalID
		{"external id set empty", func(r *UpdateKeyRequest) { r.ExternalID = Set("") }, "ExternalID"},
		{"external id set 256 chars", func(r *UpdateKeyRequest) { r.ExternalID = Set(s("e", 256)) }, "ExternalID"},
		{"external id set invalid utf8", func(r *UpdateKeyRequest) { r.ExternalID = Set("\xff") }, "ExternalID"},

		// Meta
		{"meta set nil", func(r *UpdateKeyRequest) { r.Meta = Set[map[string]any](nil) }, ""},
		{"meta set 101 entries", func(r *UpdateKeyRequest) { r.Meta = Set(metaEntries(101)) }, "Meta"},
		{"meta set NaN", func(r *UpdateKeyRequest) { r.Meta = Set(map[string]any{"x": math.NaN()}) }, "Meta"},
		{"meta set too big", func(r *UpdateKeyRequest) { r.Meta = Set(map[string]any{"k": s("v", 64<<10)}) }, "Meta"},

		// Expires
		{"expires set now", func(r *UpdateKeyRequest) { r.Expires = Set(validateNow) }, ""},
		{"expires set past", func(r *UpdateKeyRequest) { r.Expires = Set(validateNow.Add(-time.Second)) }, "Expires"},

		// Credits
		{"credits set negative", func(r *UpdateKeyRequest) { r.Credits = Set(Credits{Remaining: -1}) }, "Credits.Remaining"},
		{"credits set bad day", func(r *UpdateKeyRequest) {
			r.Credits = Set(Credits{Refill: &Refill{Interval: RefillDaily, Amount: 5, Day: 3}})
		}, "Credits.Refill.Day"},
		{"credits set bad interval", func(r *UpdateKeyRequest) {
			r.Credits = Set(Credits{Refill: &Refill{Interval: "yearly", Amount: 5}})
		}, "Credits.Refill.Interval"},

		// Ratelimits
		{"ratelimits set 50", func(r *UpdateKeyRequest) { r.Ratelimits = Set(ratelimits(50)) }, ""},
		{"ratelimits set 51", func(r *UpdateKeyRequest) { r.Ratelimits = Set(ratelimits(51)) }, "Ratelimits"},
		{"ratelimits set duplicate", func(r *UpdateKeyRequest) {
			rls := ratelimits(4)
			rls[3].Name = rls[1].Name
			r.Ratelimits = Set(rls)
		}, "Ratelimits[3].Name"},
		{"ratelimits set short duration", func(r *UpdateKeyRequest) {
			rls := ratelimits(2)
			rls[1].Duration = time.Millisecond
			r.Ratelimits = Set(rls)
		}, "Ratelimits[1].Duration"},

		// Permissions
		{"permissions set 1001", func(r *UpdateKeyRequest) { r.Permissions = Set(repeated("p", 1001)) }, "Permissions"},
		{"permissions set bad slug", func(r *UpdateKeyRequest) {
			r.Permissions = Set([]string{"a", "b", "c", "d", "e", "bad slug"})
		}, "Permissions[5]"},

		// Roles
		{"roles set 101", func(r *UpdateKeyRequest) { r.Roles = Set(repeated("r", 101)) }, "Roles"},
		{"roles set empty name", func(r *UpdateKeyRequest) { r.Roles = Set([]string{""}) }, "Roles[0]"},

		// Enabled
		{"enabled set true", func(r *UpdateKeyRequest) { r.Enabled = Set(true) }, ""},
		{"enabled null", func(r *UpdateKeyRequest) { r.Enabled = Null[bool]() }, "Enabled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			tc.mutate(&r)
			checkValidation(t, r.validate(validateNow), tc.wantField)
		})
	}
}

func FuzzValidateCreateKey(f *testing.F) {
	f.Add("ws_1", "sk", "user-1", "name", "api.read", "admin", "rps", "team", 16, int64(10), int64(1))
	f.Add("'; DROP TABLE keystore_keys; --", "a' OR '1'='1", "\" OR \"\"=\"", "%_\\", "*", "`", "--", "/*", 0, int64(0), int64(-1))
	f.Add("\xff\xfe", "\xc3\x28", "\xed\xa0\x80", "\x80", "\xe2\x82", "\xf0\x28\x8c\xbc", "\xc0\xaf", "\xff", 255, int64(-1), int64(5))
	f.Add("ws\x00", "p\x00", "\x00", "n\x00ame", "api\x00read", "\x00", "r\x00", "\x00", 15, int64(1<<62), int64(0))
	f.Add("", "", "", "", "", "", "", "", -1, int64(0), int64(0))
	f.Fuzz(func(t *testing.T, workspace, prefix, externalID, name, slug, role, rlName, metaKey string, byteLength int, remaining, limit int64) {
		exp := validateNow.Add(time.Duration(remaining))
		r := CreateKeyRequest{
			WorkspaceID: workspace,
			KeySpaceID:  workspace,
			Prefix:      prefix,
			ByteLength:  byteLength,
			ExternalID:  externalID,
			Name:        name,
			Meta:        map[string]any{metaKey: name},
			Expires:     &exp,
			Credits: &Credits{
				Remaining: remaining,
				Refill:    &Refill{Interval: RefillMonthly, Amount: limit, Day: 1 + int(uint64(remaining)%31)},
			},
			Ratelimits:  []Ratelimit{{Name: rlName, Limit: limit, Duration: time.Duration(limit) * time.Second}},
			Permissions: []string{slug, slug},
			Roles:       []string{role},
		}
		err := r.validate(validateNow)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("error does not match ErrInvalidInput: %v", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field == "" {
				t.Fatalf("error is not a *ValidationError naming a field: %v", err)
			}
			return
		}
		// Whatever passes must be storable text.
		for _, s := range []string{workspace, prefix, externalID, name, slug, role, rlName} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("accepted invalid string %q", s)
			}
		}
		// Meta keys may hold NUL (JSON escapes it) but not invalid UTF-8.
		if !utf8.ValidString(metaKey) {
			t.Fatalf("accepted invalid Meta key %q", metaKey)
		}
		if workspace == "" || role == "" || rlName == "" || slug == "" {
			t.Fatalf("accepted an empty required string")
		}

		u := UpdateKeyRequest{
			WorkspaceID: workspace,
			KeyID:       workspace,
			Name:        Set(name),
			ExternalID:  Set(externalID),
			Roles:       Set(r.Roles),
		}
		if err := u.validate(validateNow); err != nil && !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("update error does not match ErrInvalidInput: %v", err)
		}
	})
}

// VerifyKey's request validation never panics and fails only with
// ErrInvalidInput, whatever the input.
func FuzzValidateVerifyKey(f *testing.F) {
	f.Add("ks", "sk_abc", int64(1))
	f.Add("", "", int64(0))
	f.Add("ks'; DROP TABLE keystore_keys; --", "\xff\xfe\x00", int64(-1))
	f.Add("ks ", strings.Repeat("k", 600), int64(1<<62))
	f.Fuzz(func(t *testing.T, keySpace, key string, cost int64) {
		req := VerifyKeyRequest{KeySpaceID: keySpace, Key: key, Cost: cost}
		if err := req.validate(); err != nil && !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("validate returned %v, not ErrInvalidInput", err)
		}
	})
}

// Validate names the field VerifyKey would refuse, without a database.
func TestValidateVerifyKeyRequest(t *testing.T) {
	valid := VerifyKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Key: "sk_1", Permissions: "a.read AND (b OR c)",
		Ratelimits: []RatelimitRequest{{Name: "search", Cost: 2}}}
	if err := valid.Validate(); err != nil {
		t.Fatalf("a valid request: %v", err)
	}
	cases := map[string]func(r *VerifyKeyRequest){
		"KeySpaceID":         func(r *VerifyKeyRequest) { r.KeySpaceID = "" },
		"Key":                func(r *VerifyKeyRequest) { r.Key = strings.Repeat("k", 513) },
		"Cost":               func(r *VerifyKeyRequest) { r.Cost = -1 },
		"Permissions":        func(r *VerifyKeyRequest) { r.Permissions = "a AND" },
		"Ratelimits[1].Name": func(r *VerifyKeyRequest) { r.Ratelimits = append(r.Ratelimits, RatelimitRequest{Name: "search"}) },
	}
	for field, breakIt := range cases {
		r := valid
		r.Ratelimits = slices.Clone(valid.Ratelimits)
		breakIt(&r)
		var v *ValidationError
		if err := r.Validate(); !errors.As(err, &v) || v.Field != field {
			t.Errorf("%s: got %v, want a *ValidationError naming %s", field, err, field)
		}
	}
}
