package keystore

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestMatchPermissions(t *testing.T) {
	perms := []string{"a", "b", "c:*", "docs/read", "x.y-z_1"}
	cases := []struct {
		query string
		want  bool
	}{
		{"a", true},
		{"d", false},
		{"c:*", true},
		{"c:read", false}, // * is a literal character, not a wildcard
		{"docs/read", true},
		{"x.y-z_1", true},
		{"a AND b", true},
		{"a and d", false},
		{"d OR a", true},
		{"d Or e", false},
		{"a AnD b aNd c:*", true},
		// AND binds tighter than OR.
		{"d AND a OR b", true}, // (d AND a) OR b
		{"d AND (a OR b)", false},
		{"a OR d AND e", true}, // a OR (d AND e)
		{"(a OR d) AND e", false},
		{"((a))", true},
		{" \t( a\nOR d )  AND\r\nb ", true},
		{"(a OR d) AND (e OR (b AND c:*))", true},
	}
	for _, c := range cases {
		got, err := matchPermissions("Permissions", c.query, perms)
		if err != nil || got != c.want {
			t.Errorf("%q: %v, %v; want %v", c.query, got, err, c.want)
		}
	}
}

func TestMatchPermissionsMalformed(t *testing.T) {
	for _, q := range []string{
		" ", "(", ")", "()", "a AND", "OR a", "a OR OR b", "a b", "(a", "a)", "a AND (b", "a ! b", "NOT a",
		"a,b", "a\x00", "é", "a AND and", "a OR ()", strings.Repeat("a ", 501),
	} {
		_, err := matchPermissions("Permissions", q, []string{"a", "b", "NOT"})
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "Permissions" {
			t.Errorf("%q: %v, want a ValidationError naming Permissions", q, err)
		}
	}
	// NOT is no operator: as a word it is a permission name, and "NOT a"
	// is two names in a row.
	if ok, err := matchPermissions("Permissions", "NOT", []string{"NOT"}); !ok || err != nil {
		t.Errorf("NOT as a name: %v, %v", ok, err)
	}
	if ok, err := matchPermissions("Permissions", strings.Repeat("(", 499)+"ab"+strings.Repeat(")", 499), []string{"ab"}); err != nil || !ok {
		t.Errorf("1000 characters: %v, %v", ok, err)
	}
	var ve *ValidationError
	if _, err := matchPermissions("Permissions", strings.Repeat("(", 500)+"a"+strings.Repeat(")", 500), []string{"a"}); !errors.As(err, &ve) {
		t.Errorf("1001 characters: %v", err)
	}
}

// FuzzMatchPermissions: any string either is malformed (a ValidationError
// naming Permissions) or is a query without NOT, which holds when the key
// has every name it mentions and fails when it has none.
func FuzzMatchPermissions(f *testing.F) {
	for _, q := range []string{"a", "a AND b", "a OR b AND (c OR d)", "((a)", "a AND OR", "x/y:*", "and", "OR", ""} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		_, err := matchPermissions("Permissions", q, nil)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != "Permissions" {
				t.Fatalf("%q: %v", q, err)
			}
			return
		}
		var names []string
		for _, w := range strings.FieldsFunc(q, func(r rune) bool { return r == '(' || r == ')' || r == ' ' || r == '\t' || r == '\n' || r == '\r' }) {
			if !strings.EqualFold(w, "and") && !strings.EqualFold(w, "or") {
				names = append(names, w)
			}
		}
		slices.Sort(names)
		if ok, _ := matchPermissions("Permissions", q, slices.Compact(names)); !ok {
			t.Fatalf("%q fails with every name it mentions", q)
		}
		if ok, _ := matchPermissions("Permissions", q, nil); ok {
			t.Fatalf("%q holds with no permissions", q)
		}
	})
}

// A 10-term query against a key with 50 permissions.
func BenchmarkMatchPermissions(b *testing.B) {
	var perms []string
	for i := range 50 {
		perms = append(perms, "service"+string(rune('a'+i%26))+".perm"+strings.Repeat("x", i%7))
	}
	slices.Sort(perms)
	query := "(servicea.perm AND serviceb.permx) OR (servicec.permxx AND (serviced.permxxx OR nothere.read)) OR " +
		"(missing.one AND servicee.permxxxx) OR servicef.permxxxxx AND serviceg.permxxxxxx AND serviceh.perm"
	if n := len(strings.Fields(strings.NewReplacer("(", " ", ")", " ", " AND ", " ", " OR ", " ").Replace(query))); n != 10 {
		b.Fatalf("%d terms", n)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := matchPermissions("Permissions", query, perms); err != nil {
			b.Fatal(err)
		}
	}
}
