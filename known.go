package keystore

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
)

// The keys a verification cache knows to exist.
//
// A cache answers keys it holds from memory; any other key costs a
// database read, and a flood of made-up keys (someone guessing) would
// cost one read each. So a caching Store also keeps the first 8 bytes of
// the hash of every key in the database (8 bytes a key), and reads the
// database for a key it does not know at most unknownReadsPerSecond times
// a second. Past that, VerifyKey returns ErrTooManyUnknownKeys without
// reading: keys it knows, cached or not, are unaffected.
//
// The set is a hint, never an answer: a key it does not know is read
// like any other while the budget lasts, and never answered NOT_FOUND
// from it, so it needs no staleness bound. It is read in full when the
// cache starts and every fullReadEvery, and between those every
// knownReadEvery it adds the keys created since the last read (their ids
// begin with their creation time) and those rerolled with a grace period
// still running; the Store adds the keys it creates and every key a read
// found. So under a flood, a key created by another process can meet the
// error until the next read (a minute), one rerolled there without grace
// until the next full read; without a flood it is read and known at once.
// Until the first full read has completed, no budget applies.

const (
	unknownReadsPerSecond = 1000
	knownReadEvery        = time.Minute
	fullReadEvery         = 15 * time.Minute
)

// knownKeys is the set of hashes a cache knows, with the budget of reads
// for the others. Its methods are safe for concurrent use.
type knownKeys struct {
	db  *sqlx.DB
	log *slog.Logger

	mu     sync.RWMutex
	sorted []uint64            // from the last full read
	added  map[uint64]struct{} // since
	ready  atomic.Bool         // a full read has completed

	reading          atomic.Bool
	nextRead         atomic.Int64 // mono
	lastFull, lastAt time.Time    // of the reader: one read at a time

	second     atomic.Int64 // the Unix second the budget counts
	spent      atomic.Int64 // reads of unknown keys in that second
	declined   atomic.Int64
	readErrors atomic.Int64
}

func newKnownKeys(db *sqlx.DB, log *slog.Logger) *knownKeys {
	return &knownKeys{db: db, log: log, added: map[uint64]struct{}{}}
}

func prefixOfHash(hash []byte) uint64 { return binary.BigEndian.Uint64(hash) }

// has reports whether the key of hash is known to exist.
func (k *knownKeys) has(hash []byte) bool {
	p := prefixOfHash(hash)
	k.mu.RLock()
	defer k.mu.RUnlock()
	if _, ok := k.added[p]; ok {
		return true
	}
	_, ok := slices.BinarySearch(k.sorted, p)
	return ok
}

// add records the key of hash as existing.
func (k *knownKeys) add(hash []byte) {
	p := prefixOfHash(hash)
	if k.has(hash) {
		return
	}
	k.mu.Lock()
	k.added[p] = struct{}{}
	k.mu.Unlock()
}

// mayRead reports whether a key of hash may be read from the database at
// now: a key the set knows always, any other key while the second's
// budget lasts.
func (k *knownKeys) mayRead(hash []byte) bool {
	if !k.ready.Load() || k.has(hash) {
		return true
	}
	if sec := mono() / int64(time.Second); k.second.Load() != sec {
		k.second.Store(sec)
		k.spent.Store(0)
	}
	if k.spent.Add(1) <= unknownReadsPerSecond {
		return true
	}
	k.declined.Add(1)
	return false
}

// readIfDue starts a read of the set in the background when one is due
// and none is running.
func (k *knownKeys) readIfDue() {
	if mono() < k.nextRead.Load() || !k.reading.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer k.reading.Store(false)
		err := k.read()
		next := knownReadEvery
		if err != nil {
			k.readErrors.Add(1)
			k.log.Warn("keystore: reading the hashes of known keys failed", "err", err)
			next = 10 * time.Second
		}
		k.nextRead.Store(mono() + int64(next))
	}()
}

// read reads every key's hash (the first time and every fullReadEvery),
// or those of the keys created since the last read began, less a minute
// for transactions that were still open then.
func (k *knownKeys) read() error {
	ctx, cancel := context.WithTimeout(context.Background(), knownReadEvery)
	defer cancel()
	started := time.Now()
	full := k.lastFull.IsZero() || started.Sub(k.lastFull) >= fullReadEvery
	query := `SELECT LEFT(hash, 8) FROM keystore_keys UNION ALL SELECT LEFT(hash, 8) FROM keystore_old_hashes`
	var args []any
	if !full {
		// Keys created since (ids begin with their time), and keys
		// rerolled within a grace period: their new hash.
		query = `SELECT LEFT(hash, 8) FROM keystore_keys WHERE id >= ? UNION ALL
			SELECT LEFT(k.hash, 8) FROM keystore_old_hashes o JOIN keystore_keys k ON k.id = o.key_id`
		args = append(args, fmt.Sprintf("key_%012x", k.lastAt.Add(-time.Minute).UnixMilli()))
	}
	rows, err := k.db.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var prefixes []uint64
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return err
		}
		if len(b) == 8 {
			prefixes = append(prefixes, prefixOfHash(b))
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	slices.Sort(prefixes)
	k.mu.Lock()
	if full {
		// Keys added meanwhile stay; those the read found are dropped
		// from added.
		k.sorted = slices.Compact(prefixes)
		for p := range k.added {
			if _, ok := slices.BinarySearch(k.sorted, p); ok {
				delete(k.added, p)
			}
		}
		k.lastFull = started
	} else {
		for _, p := range prefixes {
			k.added[p] = struct{}{}
		}
	}
	k.mu.Unlock()
	k.lastAt = started
	k.ready.Store(true)
	return nil
}

// size returns how many keys the set holds.
func (k *knownKeys) size() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.sorted) + len(k.added)
}
