package keystore

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
)

// Reading the change feed: what keeps a verification cache (cache.go)
// within its staleness bound.
//
// Every mutation that can change a verification's answer writes, in its
// own transaction, a row of keystore_changes naming what it changed
// (changes.go). Rows are numbered per shard in commit order and without
// gaps (migration 005 says why), so a reader that remembers the last number
// it applied of each shard, its position, misses nothing: one SELECT of
// the rows past its position returns every change committed before the
// SELECT began. That SELECT is a poll.
//
// A poll does not touch the cache's entries. Applying it bumps a
// generation counter and stamps the new generation on a slot for each
// name it read (slots are found by hash: a collision only costs a miss).
// An entry remembers the generation its read included, and it is current
// while none of the slots of its key, owner and workspace carries a later
// one. So a lookup is a few atomic loads, and a miss that raced a poll is
// caught by the slot it carries.
//
// Which generation a read included is read with the row: the loading
// query also returns the shards' numbers as its server saw them (a
// replica's may lag), and the read includes every poll whose position is
// within those numbers, shard by shard.
//
// The bound: an answer from memory is given only while the last poll
// applied was sent less than maxStaleness ago; past that the Store reads
// the database (fail safe). Polls are made on demand by verifications,
// one at a time and at most one per poll interval (a quarter of
// maxStaleness), so an idle Store sends nothing. On Galera the poll waits
// for its node to apply what the cluster committed before it
// (wsrep_sync_wait), so a change made on any node is seen.

const (
	feedShards  = 32      // rows of keystore_change_shards (migration 005)
	feedRing    = 256     // rows of keystore_changes per shard (migration 005)
	feedSlots   = 1 << 16 // generation slots, by hash of a change's name
	feedHistory = 64      // positions of recent polls remembered
)

// position is the last number of each shard that a read or poll included.
type position [feedShards]int64

// includes reports whether p includes everything q does.
func (p *position) includes(q *position) bool {
	for i := range p {
		if p[i] < q[i] {
			return false
		}
	}
	return true
}

// parsePosition parses the shards' numbers as the loading query returns
// them: comma-separated, in shard order.
func parsePosition(s string) (position, bool) {
	var p position
	fields := strings.Split(s, ",")
	if len(fields) != feedShards {
		return p, false
	}
	for i, f := range fields {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return p, false
		}
		p[i] = n
	}
	return p, true
}

// feedPosition is the SQL expression of the shards' numbers, as
// parsePosition reads them.
const feedPosition = `(SELECT GROUP_CONCAT(seq ORDER BY shard SEPARATOR ',') FROM keystore_change_shards)`

// feed is a Store's reader of the change feed. Its methods are safe for
// concurrent use.
type feed struct {
	db           *sqlx.DB
	log          *slog.Logger
	maxStaleness time.Duration
	interval     time.Duration

	gen     atomic.Uint64 // generation of the last poll applied; 0 before the first
	flushed atomic.Uint64 // entries of an earlier generation are void
	fresh   atomic.Int64  // when the last poll applied was sent (mono); 0 before the first
	tried   atomic.Int64  // when the last poll was started (mono)
	polling atomic.Bool
	slots   [feedSlots]atomic.Uint64 // generation of the last change per slot

	noSyncWait atomic.Bool // the server has no wsrep_sync_wait (MySQL)

	// Slots of the Store's own changes, held at mine until a poll sent
	// after the change is applied (changedHere).
	mineMu sync.Mutex
	mine   []ownChange

	// The poller's own state: one poll runs at a time.
	cursor position
	primed bool // cursor holds a position

	mu      sync.Mutex // guards history
	history []generation

	polls, pollErrors, flushes atomic.Int64
}

// generation is the position a poll applied.
type generation struct {
	gen uint64
	pos position
}

func newFeed(db *sqlx.DB, log *slog.Logger, maxStaleness time.Duration) *feed {
	return &feed{db: db, log: log, maxStaleness: maxStaleness, interval: maxStaleness / 4}
}

// slotOf returns the slot of a change's name.
func slotOf(ref string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(ref))
	return h.Sum32() % feedSlots
}

// mono returns the time since clockStart by Go's monotonic clock, which
// a step of the wall clock (NTP, a VM resumed) does not move: freshness
// measured by the wall clock would stretch the bound by the step.
func mono() int64 { return int64(time.Since(clockStart)) + 1 } // never 0: 0 means "never"

var clockStart = time.Now()

// age returns how long ago the last poll applied was sent; the longest
// possible while no poll has been applied.
func (f *feed) age() time.Duration {
	fresh := f.fresh.Load()
	if fresh == 0 {
		return 1<<63 - 1
	}
	return time.Duration(mono() - fresh)
}

// usable reports whether answers from memory may be given now, and starts
// a poll when one is due.
func (f *feed) usable() bool {
	f.pollIfDue()
	return f.age() < f.maxStaleness
}

// current reports whether an entry of generation gen that carries slots
// has seen every change applied since: no flush and no change of its
// slots after gen.
func (f *feed) current(gen uint64, slots []uint32) bool {
	if gen < f.flushed.Load() {
		return false
	}
	for _, s := range slots {
		if f.slots[s].Load() > gen {
			return false
		}
	}
	return true
}

// generationOf returns the generation of the newest poll applied whose
// position p includes, and false when p includes none of those remembered
// (a read older than them: its answer may be too stale).
func (f *feed) generationOf(p *position) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.history) - 1; i >= 0; i-- {
		if p.includes(&f.history[i].pos) {
			return f.history[i].gen, true
		}
	}
	return 0, false
}

// pollIfDue starts a poll in the background unless one is running or the
// last started less than an interval ago.
func (f *feed) pollIfDue() {
	now := mono()
	if tried := f.tried.Load(); tried != 0 && now-tried < int64(f.interval) || !f.polling.CompareAndSwap(false, true) {
		return
	}
	f.tried.Store(now)
	go func() {
		defer f.polling.Store(false)
		f.polls.Add(1)
		if err := f.poll(); err != nil {
			f.pollErrors.Add(1)
			f.log.Warn("keystore: change feed poll failed; verifications read the database once it is older than the bound",
				"err", err, "bound", f.maxStaleness)
		}
	}()
}

// poll reads the changes past the cursor (the shards' numbers, the first
// time) and applies them, bounded by maxStaleness: a later answer would be
// of no use.
func (f *feed) poll() error {
	ctx, cancel := context.WithTimeout(context.Background(), f.maxStaleness)
	defer cancel()
	if err := f.synced(func(prefix string) error { return f.pollOnce(ctx, prefix) }); err != nil {
		return fmt.Errorf("keystore: change feed: %w", err)
	}
	return nil
}

// pollOnce is one try of poll, its statement after prefix.
func (f *feed) pollOnce(ctx context.Context, prefix string) error {
	sent := mono()
	if !f.primed {
		var rows []struct {
			Shard int   `db:"shard"`
			Seq   int64 `db:"seq"`
		}
		if err := f.db.SelectContext(ctx, &rows, prefix+`SELECT shard, seq FROM keystore_change_shards`); err != nil {
			return err
		}
		if len(rows) != feedShards {
			return fmt.Errorf("%d shards, want %d (run Migrate)", len(rows), feedShards)
		}
		for _, r := range rows {
			f.cursor[r.Shard] = r.Seq
		}
		f.primed = true
		f.apply(nil, true, sent)
		return nil
	}
	var where strings.Builder
	args := make([]any, 0, 2*feedShards)
	for shard, seq := range f.cursor {
		if shard > 0 {
			where.WriteString(" OR ")
		}
		where.WriteString("(shard = ? AND seq > ?)")
		args = append(args, shard, seq)
	}
	var rows []change
	err := f.db.SelectContext(ctx, &rows, prefix+`SELECT shard, seq, refs FROM keystore_changes WHERE `+
		where.String()+` ORDER BY shard, seq`, args...)
	if err != nil {
		return err
	}
	f.apply(rows, false, sent)
	return nil
}

// change is a row of keystore_changes.
type change struct {
	Shard int    `db:"shard"`
	Seq   int64  `db:"seq"`
	Refs  []byte `db:"refs"`
}

// apply applies a poll sent at sent that read rows (ordered by shard and
// number), voiding every entry when flush is set or the rows skip a
// number: the ring was overwritten past the cursor, and what changed in
// between is unknown.
func (f *feed) apply(rows []change, flush bool, sent int64) {
	gen := f.gen.Load() + 1
	var names []string
	for _, r := range rows {
		if r.Seq != f.cursor[r.Shard]+1 {
			flush = true
		}
		f.cursor[r.Shard] = max(f.cursor[r.Shard], r.Seq)
		var refs []string
		if json.Unmarshal(r.Refs, &refs) != nil {
			flush = true
		}
		names = append(names, refs...)
	}
	if flush {
		f.flushes.Add(1)
		raise(&f.flushed, gen)
	} else {
		for _, n := range names {
			raise(&f.slots[slotOf(n)], gen)
		}
	}
	f.settleMine(sent, gen)
	f.mu.Lock()
	if len(f.history) == feedHistory {
		f.history = append(f.history[:0], f.history[1:]...)
	}
	f.history = append(f.history, generation{gen: gen, pos: f.cursor})
	f.mu.Unlock()
	f.gen.Store(gen)
	f.fresh.Store(sent)
}

// syncWait returns the prefix that makes a Galera node apply what the
// cluster committed before it reads; "" on a server without it.
func (f *feed) syncWait() string {
	if f.noSyncWait.Load() {
		return ""
	}
	return "SET STATEMENT wsrep_sync_wait = 1 FOR "
}

// synced runs try with syncWait's prefix, and again without it when the
// server refuses the prefix.
func (f *feed) synced(try func(prefix string) error) error {
	prefix := f.syncWait()
	err := try(prefix)
	if prefix != "" && f.noteSyncWait(err) {
		err = try("")
	}
	return err
}

// noteSyncWait reports whether err is the server refusing the prefix of
// syncWait (MySQL has neither SET STATEMENT nor wsrep_sync_wait; Vitess's
// vtgate answers 1105 "syntax error"), and remembers it, so that later
// statements go without.
func (f *feed) noteSyncWait(err error) bool {
	n, ok := serverErrorNumber(err)
	if !isParseError(err) && !(ok && n == errUnknownSystemVariable) {
		return false
	}
	f.noSyncWait.Store(true)
	return true
}

// changedHere voids at once what a transaction of this Store changed
// (refs), so that the Store's own answers reflect its own changes when
// the call returns, before a poll brings them. Their slots hold mine, a
// generation no entry reaches, until a poll sent after the change is
// applied: an entry read before that poll may lack the change (a replica
// lags), one read after it cannot.
func (f *feed) changedHere(refs []string) {
	at := mono()
	f.mineMu.Lock()
	defer f.mineMu.Unlock()
	if len(f.mine)+len(refs) > maxMine {
		// A Store that changes much and polls seldom (it verifies
		// little): its oldest own changes fall back to the bound.
		f.settleMineLocked(at, f.gen.Load()+1)
	}
	for _, r := range refs {
		s := slotOf(r)
		f.slots[s].Store(mine)
		f.mine = append(f.mine, ownChange{slot: s, at: at})
	}
}

// maxMine bounds the own changes a Store remembers between polls.
const maxMine = 4096

// mine is the generation of a slot of the Store's own change that no poll
// has covered yet.
const mine = math.MaxUint64

// ownChange is a slot of the Store's own change, made at at.
type ownChange struct {
	slot uint32
	at   int64 // mono
}

// settleMine gives the slots of the Store's own changes made before a
// poll sent at sent (mono) the poll's generation gen, unless a later
// change of the Store still holds the slot.
func (f *feed) settleMine(sent int64, gen uint64) {
	f.mineMu.Lock()
	defer f.mineMu.Unlock()
	f.settleMineLocked(sent, gen)
}

func (f *feed) settleMineLocked(sent int64, gen uint64) {
	held := map[uint32]bool{}
	var left []ownChange
	for _, c := range f.mine {
		if c.at >= sent {
			held[c.slot] = true
			left = append(left, c)
		}
	}
	for _, c := range f.mine {
		if c.at < sent && !held[c.slot] {
			f.slots[c.slot].CompareAndSwap(mine, gen)
		}
	}
	f.mine = left
}

// raise sets v to gen unless it holds a later generation already: a slot
// never goes back, whoever races to set it.
func raise(v *atomic.Uint64, gen uint64) {
	for {
		old := v.Load()
		if old >= gen || v.CompareAndSwap(old, gen) {
			return
		}
	}
}
