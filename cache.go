package keystore

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"golang.org/x/sync/singleflight"
)

// WithVerifyCache lets VerifyKey answer from process memory. It holds at most
// maxKeys keys, and an answer is never older than maxStaleness: a change
// committed through any Store, in any process, on the same database is
// reflected in this Store's answers at most maxStaleness after its commit.
//
// The bound covers every change made through keystore, which writes what
// it changed to a change feed in the same transaction (feed.go); it does
// not cover rows changed by hand in SQL. When the Store cannot confirm
// that it has seen every change committed until maxStaleness ago (the
// database is unreachable or slow, the feed's table locked), VerifyKey
// reads the primary: it fails safe, never stale. Keys unknown to the database are remembered too (one database
// read per unknown key and bound, not per verification); importing a key
// forgets them. A flood of distinct made-up keys is read at most 1,000 a
// second; past that VerifyKey returns ErrTooManyUnknownKeys for keys the
// Store neither holds nor knows to exist (known.go), and answers every
// other key as before.
//
// Credits stay exact: a key with credits is looked up in memory, but its
// credits are spent by the conditional UPDATE on the primary as ever, and
// a NoSpend verification of it reads the database. Ratelimits are
// unchanged (their leases are in memory already). Concurrent misses of one
// key share one database read. Misses read through [WithReplica] with its
// fallbacks; a replica row older than a change the Store has seen is read
// again from the primary. A Store's own changes are in its answers when
// the call that made them returns, and [ContextWithPrimaryRead] bypasses
// memory. [Store.VerifyCacheStats] tells what the cache did.
func WithVerifyCache(maxKeys int, maxStaleness time.Duration) Option {
	return func(s *Store) { s.cacheKeys, s.cacheStaleness = maxKeys, maxStaleness }
}

// VerifyCacheStats is what a Store's verification cache has done since the
// Store was made. All zero for a Store without one.
type VerifyCacheStats struct {
	Hits   int64 // verifications answered from memory
	Misses int64 // verifications that read the database and kept the answer
	// FailSafe counts verifications that read the database because the
	// feed had not been read within the bound.
	FailSafe int64
	Keys     int // keys in memory, unknown ones included
	// FeedAge is how long ago the last poll of the change feed that was
	// applied was sent: answers from memory are at most this stale.
	FeedAge time.Duration
	// Declined counts verifications that returned ErrTooManyUnknownKeys:
	// keys neither held nor known, past the second's budget of reads.
	Declined   int64
	KnownKeys  int   // hashes of keys known to exist (known.go)
	Polls      int64 // polls of the change feed sent
	PollErrors int64 // polls that failed
	Flushes    int64 // times every key in memory was dropped (the Store fell too far behind the feed)
}

// VerifyCacheStats returns the counters of the Store's verification cache
// (see [WithVerifyCache]). It is safe to call at any time.
func (s *Store) VerifyCacheStats() VerifyCacheStats {
	c := s.cache
	if c == nil {
		return VerifyCacheStats{}
	}
	st := VerifyCacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), FailSafe: c.failSafe.Load(),
		FeedAge: c.feed.age(), Polls: c.feed.polls.Load(), PollErrors: c.feed.pollErrors.Load(),
		Flushes: c.feed.flushes.Load(), Declined: c.known.declined.Load(), KnownKeys: c.known.size()}
	st.Keys = int(c.size.Load())
	return st
}

// cacheShards is the number of independently locked parts of a cache.
const cacheShards = 64

// cacheLoadTimeout bounds a database read shared by concurrent misses,
// which runs on even when the caller whose miss started it gives up.
const cacheLoadTimeout = 10 * time.Second

// verifyCache is a Store's keys in memory, by hash of their plaintext.
type verifyCache struct {
	feed    *feed
	known   *knownKeys
	maxKeys int
	size    atomic.Int64 // keys held
	shards  [cacheShards]cacheShard
	loads   singleflight.Group

	hits, misses, failSafe atomic.Int64
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]*cacheEntry
}

// cacheEntry is a key as a read found it: never modified once in the
// cache, and copied before use.
type cacheEntry struct {
	row    verifyRow
	found  bool      // false: no key has this hash
	until  time.Time // found by a rerolled key's old hash: its grace end (by the Store's clock)
	loaded int64     // when it was read (mono)
	gen    uint64    // the feed generation the read included
	slots  []uint32  // the feed slots of what the answer depends on
}

func newVerifyCache(db *sqlx.DB, log *slog.Logger, maxKeys int, maxStaleness time.Duration) *verifyCache {
	c := &verifyCache{feed: newFeed(db, log, maxStaleness), known: newKnownKeys(db, log), maxKeys: maxKeys}
	for i := range c.shards {
		c.shards[i].m = map[string]*cacheEntry{}
	}
	return c
}

func (c *verifyCache) shard(hash string) *cacheShard { return &c.shards[hash[0]%cacheShards] }

// get returns the current entry of hash, or nil. An entry of no key
// lasts at most the bound: a key created since (which the feed does not
// carry) may have been missing only from a lagging read.
func (c *verifyCache) get(hash string) *cacheEntry {
	sh := c.shard(hash)
	sh.mu.RLock()
	e := sh.m[hash]
	sh.mu.RUnlock()
	if e == nil || !c.feed.current(e.gen, e.slots) || !e.found && mono()-e.loaded >= int64(c.feed.maxStaleness) {
		return nil
	}
	return e
}

// put keeps e under hash if it is current. A new key when the cache holds
// maxKeys evicts an arbitrary key of its shard (Go's map order is random),
// or is not kept when that shard is empty. An unknown key evicts nothing:
// a flood of made-up keys must not push out the keys in use.
func (c *verifyCache) put(hash string, e *cacheEntry) {
	if !c.feed.current(e.gen, e.slots) {
		return
	}
	sh := c.shard(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[hash]; !ok && !c.reserve() {
		// Full: take the place of an arbitrary key of the shard.
		if !e.found || len(sh.m) == 0 {
			return
		}
		for k := range sh.m {
			delete(sh.m, k)
			break
		}
	}
	sh.m[hash] = e
}

// reserve counts one more key unless the cache holds maxKeys.
func (c *verifyCache) reserve() bool {
	for {
		n := c.size.Load()
		if n >= int64(c.maxKeys) {
			return false
		}
		if c.size.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// forget drops hash, whose entry proved out of date (a credit balance
// changed by a spend elsewhere, which the feed does not carry).
func (c *verifyCache) forget(hash string) {
	sh := c.shard(hash)
	sh.mu.Lock()
	if _, ok := sh.m[hash]; ok {
		delete(sh.m, hash)
		c.size.Add(-1)
	}
	sh.mu.Unlock()
}

// createdHere records a key the Store created (or rerolled to hash) as
// known, so that a flood of made-up keys never keeps it from being read.
func (s *Store) createdHere(hash []byte) {
	if s.cache != nil {
		s.cache.known.add(hash)
	}
}

// changedHere voids the cache's entries of what p's transaction changed,
// as tx and execOneTrip return (committed or not: voiding is always safe).
func (s *Store) changedHere(p *pending) {
	if s.cache != nil && p != nil {
		s.cache.feed.changedHere(p.changes)
	}
}

// cachedKey returns the key of hash for req from the cache, reading it
// (once for all concurrent misses) when it is not there. It returns
// sql.ErrNoRows for no key, and whether the row came from memory.
func (s *Store) cachedKey(ctx context.Context, req VerifyKeyRequest, hash []byte, cost int64, now time.Time) (verifyRow, bool, error) {
	c := s.cache
	c.known.readIfDue()
	if ctx.Value(primaryReadKey{}) != nil { // the caller wants the primary's answer (ContextWithPrimaryRead)
		row, err := s.readKey(ctx, req, hash, cost, now)
		return row, false, err
	}
	if !c.feed.usable() {
		// Fail safe: the primary, and on Galera once its node has applied
		// what the cluster committed (a replica's or a node's lag has no
		// bound).
		c.failSafe.Add(1)
		var e *cacheEntry
		err := c.feed.synced(func(prefix string) error {
			return s.readPrimary(ctx, func(ctx context.Context, db *sqlx.DB) (err error) {
				e, _, err = loadRow(ctx, db, prefix, hash, now)
				return err
			})
		})
		switch {
		case err != nil:
			return verifyRow{}, false, err
		case !e.found:
			return verifyRow{}, false, sql.ErrNoRows
		}
		return e.row, false, nil
	}
	key := string(hash)
	if e := c.get(key); e != nil && !(req.NoSpend && e.row.Remaining.Valid) && (e.until.IsZero() || now.Before(e.until)) {
		c.hits.Add(1)
		if !e.found {
			return verifyRow{}, true, sql.ErrNoRows
		}
		return e.row.clone(), true, nil
	}
	c.misses.Add(1)
	if !c.known.mayRead(hash) {
		return verifyRow{}, false, ErrTooManyUnknownKeys
	}
	load := func() (*cacheEntry, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cacheLoadTimeout)
		defer cancel()
		return s.loadKey(ctx, hash, now)
	}
	var led bool // this call's load ran, not another's that it joined
	ch := c.loads.DoChan(key, func() (any, error) {
		led = true
		return load()
	})
	var e *cacheEntry
	select {
	case r := <-ch:
		if r.Err != nil {
			return verifyRow{}, false, r.Err
		}
		e = r.Val.(*cacheEntry)
	case <-ctx.Done():
		return verifyRow{}, false, ctx.Err()
	}
	if !led && !c.feed.current(e.gen, e.slots) {
		// The load this call joined read before a change the Store has
		// seen since (its own, say): read afresh.
		var err error
		if e, err = load(); err != nil {
			return verifyRow{}, false, err
		}
	}
	if !e.found {
		return verifyRow{}, false, sql.ErrNoRows
	}
	return e.row.clone(), false, nil
}

// loadKey reads the key of hash with the feed position its read
// included, and keeps it in the cache when that position is known and no
// change since touched it. A row not known to be that recent (read from a
// replica, or from a Galera node that had not applied a change its poll
// has seen) is read again from the primary, waiting on Galera for the
// node to apply what the cluster committed. Its generation is 0 when it
// is not known.
func (s *Store) loadKey(ctx context.Context, hash []byte, now time.Time) (*cacheEntry, error) {
	c := s.cache
	var e *cacheEntry
	var pos position // the feed position the read included
	prefix := ""
	read := func(ctx context.Context, db *sqlx.DB) (err error) {
		e, pos, err = loadRow(ctx, db, prefix, hash, now)
		if err == nil && !e.found {
			err = sql.ErrNoRows // which s.read asks the primary about
		}
		return err
	}
	err := s.read(ctx, read)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	e.slots = e.dependsOn()
	gen, known := c.feed.generationOf(&pos)
	if !known || !c.feed.current(gen, e.slots) {
		err := c.feed.synced(func(p string) error {
			prefix = p
			return s.readPrimary(ctx, read)
		})
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		e.slots = e.dependsOn()
		gen, known = c.feed.generationOf(&pos)
	}
	e.loaded = mono()
	if known {
		e.gen = gen
		c.put(string(hash), e) // e is shared from here on: no more writes
	}
	if e.found {
		c.known.add(hash)
	}
	return e, nil
}

// dependsOn returns the feed slots of what e's answer depends on: the
// key, its owner and its workspace, or, for no key, every unknown key.
func (e *cacheEntry) dependsOn() []uint32 {
	if !e.found {
		return []uint32{slotOf(unknownKeysRef)}
	}
	slots := []uint32{slotOf(keyRef(e.row.ID)), slotOf(workspaceRef(e.row.WorkspaceID))}
	if e.row.IdentityID.Valid {
		slots = append(slots, slotOf(identityRef(e.row.IdentityID.String)))
	}
	return slots
}

// loadRow reads the key of hash, by its hash or an old hash still in its
// grace at now, in one statement (after prefix, syncWait's or ""): the feed position of the statement's
// snapshot comes with every row, and a row of NULLs brings it when there
// is no key.
func loadRow(ctx context.Context, db *sqlx.DB, prefix string, hash []byte, now time.Time) (*cacheEntry, position, error) {
	rows, err := db.QueryContext(ctx, prefix+selectCachedVerify, hash, hash, utc(now))
	if err != nil {
		return nil, position{}, err
	}
	defer rows.Close()
	var found *cacheEntry
	var pos position
	n := 0
	for ; rows.Next(); n++ {
		e := &cacheEntry{}
		var feed string
		var id, workspaceID, keySpaceID sql.NullString
		var enabled sql.NullBool
		var until dbTime
		if err := rows.Scan(append([]any{&feed, &until}, e.row.dest(&id, &workspaceID, &keySpaceID, &enabled)...)...); err != nil {
			return nil, pos, err
		}
		var ok bool
		if pos, ok = parsePosition(feed); !ok {
			return nil, pos, errors.New("keystore: change feed: unreadable position (run Migrate)")
		}
		if id.Valid && found == nil {
			e.row.ID, e.row.WorkspaceID, e.row.KeySpaceID, e.row.Enabled = id.String, workspaceID.String, keySpaceID.String, enabled.Bool
			e.found, e.until = true, until.Time
			found = e
		}
	}
	if err := rows.Err(); err != nil {
		return nil, pos, err
	}
	if n == 0 {
		return nil, pos, errors.New("keystore: verify key: the lookup returned no row")
	}
	if found == nil {
		found = &cacheEntry{}
	}
	return found, pos, nil
}

// selectCachedVerify is loadRow's statement: the key by its hash, by an
// old hash, and a row of NULLs (the order of the rows is not relied on).
var selectCachedVerify = `SELECT ` + feedPosition + `, NULL, ` + verifyColumns + ` FROM keystore_keys k WHERE k.hash = ?
	UNION ALL SELECT ` + feedPosition + `, o.expires_at, ` + verifyColumns + `
		FROM keystore_old_hashes o JOIN keystore_keys k ON k.id = o.key_id WHERE o.hash = ? AND o.expires_at > ?
	UNION ALL SELECT ` + feedPosition + `, NULL` + strings.Repeat(", NULL", len((&verifyRow{}).dest(nil, nil, nil, nil)))

// clone returns a copy of r that shares nothing a caller could modify
// with r.
func (r verifyRow) clone() verifyRow {
	r.Permissions.V = slices.Clone(r.Permissions.V)
	r.Roles.V = slices.Clone(r.Roles.V)
	r.Ratelimits.V = slices.Clone(r.Ratelimits.V)
	r.IdentityRatelimits.V = slices.Clone(r.IdentityRatelimits.V)
	r.Meta.V = cloneJSON(r.Meta.V)
	r.IdentityMeta.V = cloneJSON(r.IdentityMeta.V)
	return r
}

// cloneJSON returns a deep copy of a decoded JSON object.
func cloneJSON(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	m = maps.Clone(m)
	for k, v := range m {
		m[k] = cloneJSONValue(v)
	}
	return m
}

func cloneJSONValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return cloneJSON(v)
	case []any:
		out := slices.Clone(v)
		for i, x := range out {
			out[i] = cloneJSONValue(x)
		}
		return out
	}
	return v
}
