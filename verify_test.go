package keystore_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
)

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time)     { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

func verify(t testing.TB, s *keystore.Store, key string, cost int64) keystore.Verification {
	t.Helper()
	v, err := s.VerifyKey(context.Background(), keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key, Cost: cost})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func remaining(v keystore.Verification) string {
	if v.Remaining == nil {
		return "unlimited"
	}
	return strconv.FormatInt(*v.Remaining, 10)
}

func TestVerifyKeyCodes(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 1, 10, 12, 0, 0, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	expires := clock.Now().Add(time.Hour)
	create := func(req keystore.CreateKeyRequest) keystore.CreatedKey {
		req.WorkspaceID, req.KeySpaceID = "ws", "ks"
		c, err := s.CreateKey(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	plain := create(keystore.CreateKeyRequest{ExternalID: "owner", Meta: map[string]any{"tier": "gold"},
		Permissions: []string{"read"}, Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 5, Duration: time.Second}}})
	disabled := create(keystore.CreateKeyRequest{Disabled: true})
	expiring := create(keystore.CreateKeyRequest{Expires: &expires})
	deleted := create(keystore.CreateKeyRequest{})
	db.MustExec(`UPDATE keystore_keys SET deleted_at = NOW(6) WHERE id = ?`, deleted.KeyID)

	v := verify(t, s, plain.Key, 0)
	if !v.Valid || v.Code != keystore.CodeValid || v.KeyID != plain.KeyID || v.ExternalID != "owner" ||
		v.IdentityID != plain.IdentityID || v.Remaining != nil || v.Meta["tier"] != "gold" ||
		strings.Join(v.Permissions, ",") != "read" || len(v.Ratelimits) != 1 {
		t.Fatalf("valid key: %+v", v)
	}
	for name, c := range map[string]struct {
		key  string
		code keystore.VerificationCode
	}{
		"unknown":   {plain.Key + "x", keystore.CodeNotFound},
		"disabled":  {disabled.Key, keystore.CodeDisabled},
		"deleted":   {deleted.Key, keystore.CodeNotFound},
		"unexpired": {expiring.Key, keystore.CodeValid},
	} {
		if v := verify(t, s, c.key, 0); v.Code != c.code || v.Valid != (c.code == keystore.CodeValid) {
			t.Errorf("%s: %s (valid %v), want %s", name, v.Code, v.Valid, c.code)
		}
	}
	other, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "other-ks", Key: plain.Key})
	if err != nil || other.Code != keystore.CodeNotFound || other.KeyID != "" {
		t.Fatalf("key of another key space: %+v, %v", other, err)
	}
	clock.Add(time.Hour)
	if v := verify(t, s, expiring.Key, 0); v.Code != keystore.CodeExpired || v.Valid {
		t.Fatalf("at its expiry: %s, want EXPIRED", v.Code)
	}
	for _, bad := range []keystore.VerifyKeyRequest{
		{KeySpaceID: "ks"},
		{KeySpaceID: "ks", Key: strings.Repeat("k", 1<<20)},
		{KeySpaceID: "ks", Key: plain.Key, Cost: -1},
		{Key: plain.Key},
	} {
		if _, err := s.VerifyKey(ctx, bad); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("VerifyKey(%.40v): %v, want ErrInvalidInput", bad, err)
		}
	}
}

func TestVerifyKeySpendsCredits(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Credits: &keystore.Credits{Remaining: 5}})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		cost    int64
		noSpend bool
		code    keystore.VerificationCode
		left    int64
	}{
		{0, false, keystore.CodeValid, 4}, // the default cost is 1
		{3, false, keystore.CodeValid, 1},
		{2, false, keystore.CodeUsageExceeded, 1}, // nothing spent, what is left reported
		{5, true, keystore.CodeValid, 1},          // NoSpend neither spends nor checks
		{1, false, keystore.CodeValid, 0},
		{1, false, keystore.CodeUsageExceeded, 0},
	}
	for i, step := range steps {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, Cost: step.cost, NoSpend: step.noSpend})
		if err != nil {
			t.Fatal(err)
		}
		if v.Code != step.code || v.Remaining == nil || *v.Remaining != step.left {
			t.Fatalf("step %d: %s, remaining %v; want %s, %d", i, v.Code, v.Remaining, step.code, step.left)
		}
		if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != int(step.left) {
			t.Fatalf("step %d: %d credits in the database, want %d", i, n, step.left)
		}
	}
}

// 1,000 concurrent verifications of a key with 100 credits: exactly 100 are
// valid and the balance ends at zero.
func TestVerifyKeyConcurrentSpendIsExact(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for _, mixed := range []bool{false, true} {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Credits: &keystore.Credits{Remaining: 100}})
		if err != nil {
			t.Fatal(err)
		}
		var valid, exceeded, spent atomic.Int64
		sem := make(chan struct{}, 64)
		errs := parallel(1000, func(i int) error {
			sem <- struct{}{}
			defer func() { <-sem }()
			cost := int64(1)
			if mixed {
				cost = int64(i%7 + 1)
			}
			v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, Cost: cost})
			switch {
			case err != nil:
				return err
			case v.Valid:
				valid.Add(1)
				spent.Add(cost)
			case v.Code == keystore.CodeUsageExceeded && v.Remaining != nil && *v.Remaining < cost:
				exceeded.Add(1)
			default:
				return errors.New("unexpected verification " + string(v.Code))
			}
			return nil
		})
		failOnErrors(t, errs)
		left := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID)
		if valid.Load()+exceeded.Load() != 1000 || int64(left) != 100-spent.Load() || left < 0 {
			t.Fatalf("mixed=%v: %d valid, %d exceeded, %d spent, %d left", mixed, valid.Load(), exceeded.Load(), spent.Load(), left)
		}
		if !mixed && (valid.Load() != 100 || left != 0) {
			t.Fatalf("%d valid verifications of 100 credits, %d left; want 100 and 0", valid.Load(), left)
		}
		if mixed && left >= 7 {
			t.Fatalf("%d credits left although every cost is at most 7", left)
		}
	}
}

func TestVerifyKeyRefills(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 1, 31, 15, 0, 0, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	create := func(refill keystore.Refill) keystore.CreatedKey {
		c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
			Credits: &keystore.Credits{Remaining: 2, Refill: &refill}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	daily := create(keystore.Refill{Interval: keystore.RefillDaily, Amount: 10})
	monthly := create(keystore.Refill{Interval: keystore.RefillMonthly, Amount: 50, Day: 31})
	check := func(when string, key keystore.CreatedKey, cost int64, want string) {
		t.Helper()
		if got := remaining(verify(t, s, key.Key, cost)); got != want {
			t.Fatalf("%s: remaining %s, want %s", when, got, want)
		}
	}
	check("created", daily, 1, "1")
	check("created", monthly, 1, "1")
	clock.Set(time.Date(2027, 1, 31, 23, 59, 59, 0, time.UTC))
	check("same day", daily, 1, "0")
	clock.Set(time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC))
	check("next midnight", daily, 1, "9")
	check("Feb 1: no monthly refill yet", monthly, 1, "0")
	clock.Set(time.Date(2027, 2, 27, 23, 0, 0, 0, time.UTC))
	check("Feb 27", monthly, 0, "0")
	clock.Set(time.Date(2027, 2, 28, 0, 0, 1, 0, time.UTC)) // day 31 clamps to Feb 28
	check("Feb 28, day 31 clamped", monthly, 5, "45")
	clock.Set(time.Date(2027, 3, 30, 0, 0, 0, 0, time.UTC))
	check("Mar 30", monthly, 5, "40")
	clock.Set(time.Date(2027, 3, 31, 0, 0, 0, 0, time.UTC))
	check("Mar 31", monthly, 5, "45")
	check("Mar 31 again", monthly, 5, "40")

	// At a boundary, concurrent verifications refill once: 64 callers at
	// cost 1 after a daily refill of 10 leave 0, with exactly 10 valid.
	clock.Set(time.Date(2027, 4, 1, 0, 0, 0, 0, time.UTC))
	var valid atomic.Int64
	failOnErrors(t, parallel(64, func(int) error {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: daily.Key})
		if v.Valid {
			valid.Add(1)
		}
		return err
	}))
	if valid.Load() != 10 || count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, daily.KeyID) != 0 {
		t.Fatalf("%d valid after a refill of 10 at the boundary, want 10 (refilled once)", valid.Load())
	}
}

// GetKey, ListKeys and UpdateKey show the balance VerifyKey would use: a
// refill that is due counts before the next spend writes it.
func TestReadsShowDueRefill(t *testing.T) {
	clock := &fakeClock{t: time.Date(2027, 5, 10, 12, 0, 0, 0, time.UTC)}
	s, db := newStore(t, keystore.WithClock(clock.Now))
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 2, Refill: &keystore.Refill{Interval: keystore.RefillDaily, Amount: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := remaining(verify(t, s, c.Key, 1)); got != "1" {
		t.Fatalf("after a spend: %s", got)
	}
	balances := func() []int64 {
		t.Helper()
		k, err := s.GetKey(ctx, "ws", c.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		page, err := s.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
		if err != nil || len(page.Items) != 1 {
			t.Fatalf("ListKeys: %v, %v", page.Items, err)
		}
		updated, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: c.KeyID, Name: keystore.Set("n")})
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, NoSpend: true})
		if err != nil {
			t.Fatal(err)
		}
		return []int64{k.Credits.Remaining, page.Items[0].Credits.Remaining, updated.Credits.Remaining, *v.Remaining}
	}
	if got := balances(); !slices.Equal(got, []int64{1, 1, 1, 1}) {
		t.Fatalf("same day: GetKey, ListKeys, UpdateKey, VerifyKey show %v, want 1", got)
	}
	clock.Set(time.Date(2027, 5, 11, 0, 0, 1, 0, time.UTC))
	if got := balances(); !slices.Equal(got, []int64{10, 10, 10, 10}) {
		t.Fatalf("refill due: GetKey, ListKeys, UpdateKey, VerifyKey show %v, want 10", got)
	}
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != 1 {
		t.Fatalf("stored remaining %d: a read must not write the refill", n)
	}
	if got := remaining(verify(t, s, c.Key, 3)); got != "7" {
		t.Fatalf("spend after the refill: %s, want 7", got)
	}
}

// With WorkspaceID set, a key verifies only in its own workspace, even when
// another workspace has a key space of the same id; without it, key-space
// ids match across workspaces, as documented.
func TestVerifyKeyWorkspaceScope(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	a, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws-a", KeySpaceID: "default",
		Credits: &keystore.Credits{Remaining: 5}})
	if err != nil {
		t.Fatal(err)
	}
	check := func(workspace string, want keystore.VerificationCode) {
		t.Helper()
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: workspace, KeySpaceID: "default", Key: a.Key})
		if err != nil || v.Code != want {
			t.Fatalf("workspace %q: %v, %v; want %s", workspace, v.Code, err, want)
		}
		if want == keystore.CodeNotFound && (v.KeyID != "" || v.WorkspaceID != "" || v.Remaining != nil) {
			t.Fatalf("workspace %q: NOT_FOUND tells about the key: %+v", workspace, v)
		}
	}
	check("ws-b", keystore.CodeNotFound)
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, a.KeyID); n != 5 {
		t.Fatalf("a verification in another workspace spent credits: %d left", n)
	}
	check("ws-a", keystore.CodeValid)
	check("", keystore.CodeValid)
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, a.KeyID); n != 3 {
		t.Fatalf("%d credits left after two valid verifications of 5", n)
	}
	_, err = s.VerifyKey(ctx, keystore.VerifyKeyRequest{WorkspaceID: "ws-a ", KeySpaceID: "default", Key: a.Key})
	var ve *keystore.ValidationError
	if !errors.As(err, &ve) || ve.Field != "WorkspaceID" {
		t.Fatalf("WorkspaceID with a trailing space: %v", err)
	}
}

// VerifyKey is one statement for a key without credits and two with.
func TestVerifyKeyStatementCount(t *testing.T) {
	s, db := storeOn(t, keystoretest.DSN(t), 1)
	ctx := context.Background()
	free, _ := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "o", Permissions: []string{"p"}})
	metered, _ := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Credits: &keystore.Credits{Remaining: 9}})
	if n := statements(t, db, func() { verify(t, s, free.Key, 1) }); n != 1 {
		t.Errorf("without credits: %d statements, want 1", n)
	}
	if n := statements(t, db, func() { verify(t, s, metered.Key, 1) }); n != 2 {
		t.Errorf("with credits: %d statements, want 2", n)
	}
}

// A key whose owner was deleted still verifies, as an unowned key.
func TestVerifyKeyOfDeletedIdentity(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateIdentity(ctx, keystore.UpdateIdentityRequest{WorkspaceID: "ws", ExternalID: "gone",
		Meta:       keystore.Set(map[string]any{"plan": "pro"}),
		Ratelimits: keystore.Set([]keystore.Ratelimit{{Name: "rpm", Limit: 60, Duration: time.Minute}})}); err != nil {
		t.Fatal(err)
	}
	v := verify(t, s, c.Key, 0)
	if v.ExternalID != "gone" || v.IdentityMeta["plan"] != "pro" || len(v.IdentityRatelimits) != 1 {
		t.Fatalf("before the delete: %+v", v)
	}
	if err := s.DeleteIdentity(ctx, "ws", "gone"); err != nil {
		t.Fatal(err)
	}
	v = verify(t, s, c.Key, 0)
	if !v.Valid || v.IdentityID != "" || v.ExternalID != "" || v.IdentityMeta != nil || v.IdentityRatelimits != nil {
		t.Fatalf("after the delete: %+v", v)
	}
	// A new identity of the same external id does not adopt the key.
	if _, err := s.EnsureIdentity(ctx, "ws", "gone"); err != nil {
		t.Fatal(err)
	}
	if v := verify(t, s, c.Key, 0); v.IdentityID != "" {
		t.Fatalf("the key was adopted by the new identity %s", v.IdentityID)
	}
}

// VerifyKey's prepared lookup is released by Close, and prepared again after.
func TestCloseReleasesPreparedStatements(t *testing.T) {
	s, db := storeOn(t, keystoretest.DSN(t), 1)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	prepared := func() int { return serverStatus(t, db, "GLOBAL", "Prepared_stmt_count") }
	if onVitess(t) {
		// vtgate keeps prepared statements itself and runs them on MySQL as
		// plain queries, so MySQL's count does not move; those the pool
		// holds at vtgate are counted instead (vitess_test.go).
		c := countersOf(t, db)
		prepared = func() int { return int(c.prepared.Load()) }
	}
	before := prepared()
	verify(t, s, c.Key, 1)
	if n := prepared(); n != before+1 {
		t.Fatalf("%d prepared statements after VerifyKey, want %d", n, before+1)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := prepared(); n != before {
		t.Fatalf("%d prepared statements after Close, want %d", n, before)
	}
	verify(t, s, c.Key, 1) // prepares again
}

// VerifyKey's permission query is evaluated against the key's merged
// permissions (direct and through roles); a key that does not satisfy it is
// INSUFFICIENT_PERMISSIONS and spends nothing; a malformed query is invalid
// input and reads nothing.
func TestVerifyKeyPermissionQuery(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	createRole(t, db, "ws", "editor", "docs.write", "docs/admin")
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Permissions: []string{"docs.read", "billing:*"}, Roles: []string{"editor"}, Credits: &keystore.Credits{Remaining: 100}})
	if err != nil {
		t.Fatal(err)
	}
	disabled, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Disabled: true})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		query string
		want  keystore.VerificationCode
	}{
		{"", keystore.CodeValid},
		{"docs.read", keystore.CodeValid},
		{"docs.write AND docs/admin", keystore.CodeValid}, // through the role
		{"billing:*", keystore.CodeValid},
		{"billing:read", keystore.CodeInsufficientPermissions}, // * is literal
		{"docs.delete", keystore.CodeInsufficientPermissions},
		{"docs.delete OR docs.read AND billing:*", keystore.CodeValid},
		{"(docs.delete OR docs.read) and nothing", keystore.CodeInsufficientPermissions},
	}
	valid := 0
	for _, c2 := range cases {
		v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, Permissions: c2.query})
		if err != nil || v.Code != c2.want || v.Valid != (c2.want == keystore.CodeValid) {
			t.Errorf("%q: %s, %v; want %s", c2.query, v.Code, err, c2.want)
		}
		if v.Valid {
			valid++
		}
	}
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != 100-valid {
		t.Errorf("%d credits left after %d valid verifications of 100: an insufficient one spent", n, valid)
	}
	// Disabled comes before permissions.
	if v, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: disabled.Key, Permissions: "x"}); err != nil || v.Code != keystore.CodeDisabled {
		t.Errorf("disabled key with a failing query: %s, %v", v.Code, err)
	}
	for _, q := range []string{"docs.read AND", "(docs.read", "docs read", "NOT docs.read", strings.Repeat("a OR ", 200) + "a"} {
		_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key, Permissions: q})
		var ve *keystore.ValidationError
		if !errors.As(err, &ve) || ve.Field != "Permissions" {
			t.Errorf("%.30q: %v, want a ValidationError naming Permissions", q, err)
		}
	}
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != 100-valid {
		t.Errorf("a malformed query spent credits: %d left", n)
	}
}

// A context that ends while the credit spend's UPDATE runs leaves its
// outcome unknown to the client: the error matches ErrAmbiguousCommit and
// the context's error. One that ended before anything was sent is the
// context's error alone.
func TestVerifyKeyContextEndsDuringSpend(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	c, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Credits: &keystore.Credits{Remaining: 5}})
	if err != nil {
		t.Fatal(err)
	}
	holder, err := db.Beginx() // holds the key's row, so the spend waits
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(`SELECT 1 FROM keystore_keys WHERE id = ? FOR UPDATE`, c.KeyID); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = s.VerifyKey(short, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
	if !errors.Is(err, keystore.ErrAmbiguousCommit) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline during the spend: %v, want ErrAmbiguousCommit and DeadlineExceeded", err)
	}
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	// The server may still run the orphaned UPDATE once the lock is free
	// (it does not notice the client left while it waits for a lock): that
	// is why the answer is "unknown", not "nothing spent". Either way it
	// spends at most once.
	time.Sleep(200 * time.Millisecond)
	if n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID); n != 5 && n != 4 {
		t.Fatalf("remaining %d after one interrupted spend of 5 credits", n)
	}
	ended, cancel2 := context.WithCancel(ctx)
	cancel2()
	if _, err := s.VerifyKey(ended, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key}); !errors.Is(err, context.Canceled) || errors.Is(err, keystore.ErrAmbiguousCommit) {
		t.Fatalf("ended before: %v, want context.Canceled alone", err)
	}
}
