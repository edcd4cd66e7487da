package keystore_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/idsafe/keystore"
	"github.com/jmoiron/sqlx"
)

// BenchmarkCreateKey compares Store.CreateKey with the shapes of "create a
// key for an externalId" that came before it, on the same server and the
// same schema, in one run:
//
//	keystore     Store.CreateKey (plain read, INSERT, on 1062 a shared-lock read)
//	keystore-noaudit  the same, with WithoutAudit: one statement less
//	keystore-stores  keystore-noaudit with a Store per worker, as callers in
//	             separate processes: no Store sees another's creation, so a
//	             hot burst races on the server (scenario hot only)
//	seed-naive   find-then-insert, no retry: a 1062 or 1213 is an error
//	seed-retry3  the seed's fix: the whole transaction up to 3 times, no
//	             backoff, on 1062/1213; after a duplicate the identity is
//	             read again outside the transaction (on db, not tx)
//	seed-retry3+audit  the same, also inserting the audit event keystore
//	             writes (one statement), for a like-for-like comparison
//	upsert       INSERT ... ON DUPLICATE KEY UPDATE first, then SELECT the
//	             identity in the same transaction; up to 10 attempts with
//	             50 ms / 100 ms backoff on 1062/1213
//	floor        BEGIN; INSERT the key row alone; COMMIT
//	floor-identity  BEGIN; INSERT a new identity; INSERT the key row
//	             owned by it; COMMIT: the least any design that creates the
//	             identity in the key's transaction sends (scenario new only)
//
// under four scenarios:
//
//	new       every op a new externalId, on 1, 16 and 64 workers
//	existing  every op on one identity created before the timer, on 1, 16
//	          and 64 workers
//	hot       bursts of 64 goroutines released together on one new
//	          externalId, a new one every burst
//	mixed-order  1, 16 and 64 workers, every op a key with 6 permissions (new ones
//	          every 50 ops, shared by all workers) and 2 ratelimits, given in
//	          opposite orders by odd and even ops; its own shapes (see
//	          mixedShapes): the deadlock-prone mix
//
// Names are BenchmarkCreateKey/scenario=S/c=N/shape=X, so that
//
//	benchstat -col /shape bench.txt
//
// puts the shapes side by side. The shapes of one scenario run one after the
// other, close in time, in an order rotated by KEYSTORE_BENCH_ROTATE (make
// bench sets it to the run's number), so that no shape always runs first,
// after the previous scenario's writes.
//
// Custom metrics: errors/op (errors returned to the caller), stmts/op (the
// server's global Questions counter over the timed part, which is valid
// because the test binary's server is private to it: run benchmarks alone,
// with -run '^$'), rollbacks/op (its Com_rollback counter), attempts/op
// (transactions begun per op: ops + retries), p50-ms, p99-ms and max-ms
// (latency of one op as its caller sees it), client-us/op and server-us/op
// (CPU time of the test binary and of its server per op; the server's only
// when the binary started it, on Linux). ns/op is wall time over ops, i.e.
// the inverse of throughput at that concurrency.
//
// Every run (b.N=1 and the real one) gets a fresh database.
func BenchmarkCreateKey(b *testing.B) {
	scenarios := []struct {
		name    string
		workers int
	}{
		{"new", 1}, {"new", 16}, {"new", 64},
		{"existing", 1}, {"existing", 16}, {"existing", 64},
		{"hot", hotBurst},
	}
	for _, sc := range scenarios {
		b.Run(fmt.Sprintf("scenario=%s/c=%d", sc.name, sc.workers), func(b *testing.B) {
			for _, sh := range rotated(benchShapes()) {
				if sh.name == "floor-identity" && sc.name != "new" {
					continue // its INSERT of the identity fails when it exists
				}
				if sh.stores > 0 && sc.name != "hot" {
					continue // the same as keystore-noaudit unless callers race
				}
				b.Run("shape="+sh.name, func(b *testing.B) {
					benchCreateKey(b, sc.name, sc.workers, sh)
				})
			}
		})
	}
	for _, workers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("scenario=mixed-order/c=%d", workers), func(b *testing.B) {
			for _, sh := range rotated(mixedShapes()) {
				b.Run("shape="+sh.name, func(b *testing.B) { benchMixedOrder(b, workers, sh) })
			}
		})
	}
}

const (
	benchWorkspace = "ws-bench"
	benchKeySpace  = "ks-bench"
	hotBurst       = 64
)

// rotated returns shapes rotated left for run KEYSTORE_BENCH_ROTATE (0 if
// unset) of make bench's five.
func rotated[T any](shapes []T) []T {
	run, _ := strconv.Atoi(os.Getenv("KEYSTORE_BENCH_ROTATE"))
	if len(shapes) == 0 || run <= 0 {
		return shapes
	}
	// Spread five runs over the shapes, so that as many shapes as can run
	// first do: with 8 shapes runs 0-4 start at 0, 1, 3, 4 and 6.
	n := run * len(shapes) / 5 % len(shapes)
	return slices.Concat(shapes[n:], shapes[:n])
}

// baseline is one hand-written shape of "create a key owned by externalID".
// It reports retries through noteRetry(ctx, cause).
type baseline func(ctx context.Context, db *sqlx.DB, workspace, externalID string) error

type benchShape struct {
	name string
	fn   baseline          // nil for keystore, which goes through the Store
	opts []keystore.Option // of that Store
	// stores > 0: operation i goes through Store i % stores, all on one pool
	stores int
}

func benchShapes() []benchShape {
	return []benchShape{
		{name: "keystore"},
		{name: "keystore-noaudit", opts: []keystore.Option{keystore.WithoutAudit()}},
		{name: "keystore-stores", opts: []keystore.Option{keystore.WithoutAudit()}, stores: hotBurst},
		{name: "seed-naive", fn: seedNaive},
		{name: "seed-retry3", fn: seedRetry3(false)},
		{name: "seed-retry3+audit", fn: seedRetry3(true)},
		{name: "upsert", fn: upsertRetry10},
		{name: "floor", fn: floorInsert},
		{name: "floor-identity", fn: floorIdentityInsert},
	}
}

// benchCreateKey runs one shape under one scenario and reports its metrics.
func benchCreateKey(b *testing.B, scenario string, workers int, sh benchShape) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ctx, store, db, counters := newBenchStore(ctx, b, sh.opts...)
	stores := []*keystore.Store{store}
	for len(stores) < sh.stores {
		stores = append(stores, counters.store(b, db, sh.opts...))
	}
	op := func(ctx context.Context, i int, externalID string) error {
		_, err := stores[i%len(stores)].CreateKey(ctx, keystore.CreateKeyRequest{
			WorkspaceID: benchWorkspace, KeySpaceID: benchKeySpace, ExternalID: externalID})
		return err
	}
	if sh.fn != nil {
		op = func(ctx context.Context, _ int, externalID string) error {
			return sh.fn(ctx, db, benchWorkspace, externalID)
		}
	}
	if scenario == "existing" {
		if _, err := store.EnsureIdentity(ctx, benchWorkspace, "existing"); err != nil {
			b.Fatal(err)
		}
	}

	// seed-retry3 holds a transaction's connection while it reads on a
	// second one, so warm up twice as many connections, within the pool's 100.
	errs := measured(b, db, min(2*workers, 90), func(timed func(i int, op func() error)) {
		switch scenario {
		case "new":
			runWorkers(b.N, workers, func(i int) { timed(i, func() error { return op(ctx, i, fmt.Sprintf("new-%d", i)) }) })
		case "existing":
			runWorkers(b.N, workers, func(i int) { timed(i, func() error { return op(ctx, i, "existing") }) })
		case "hot":
			runBursts(b.N, workers, func(burst, i int) {
				timed(i, func() error { return op(ctx, i, fmt.Sprintf("hot-%d", burst)) })
			})
		default:
			b.Fatalf("unknown scenario %q", scenario)
		}
	})
	counters.report(b, sh.name, errs)
}

// newBenchStore returns a Store (with opts) on a fresh database, that
// database, and the counters of one benchmark run, which the Store's retries
// and, through the returned context, the baselines' retries (noteRetry) go to.
func newBenchStore(ctx context.Context, b *testing.B, opts ...keystore.Option) (context.Context, *keystore.Store, *sqlx.DB, *benchCounters) {
	b.Helper()
	counters := &benchCounters{retries: map[string]int{}, errs: map[string]int{}}
	store, db := newStore(b, counters.withRetries(opts)...)
	return context.WithValue(ctx, benchCountersKey{}, counters), store, db, counters
}

// withRetries returns opts and an OnRetry option that counts retries in c.
func (c *benchCounters) withRetries(opts []keystore.Option) []keystore.Option {
	return append(slices.Clone(opts), keystore.WithRetryOptions(keystore.OnRetry(func(_ int, err error) {
		c.retry(err)
	})))
}

// store returns another Store (with opts) on db, whose retries c counts.
func (c *benchCounters) store(b *testing.B, db *sqlx.DB, opts ...keystore.Option) *keystore.Store {
	s, err := keystore.New(db, c.withRetries(opts)...)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// measured runs the timed part of a benchmark: it opens warm connections
// first, so that neither latency nor the statement count includes
// connecting, then calls run, whose timed(i, op) runs and times op as
// operation i of b.N. It reports errors/op, stmts/op and rollbacks/op (the
// server's global Questions and Com_rollback counters, valid because the
// test binary's server is private to it), p50-ms, p99-ms, max-ms,
// client-us/op and server-us/op (see cpuTimes), and returns the operations'
// errors.
func measured(b *testing.B, db *sqlx.DB, warm int, run func(timed func(i int, op func() error))) []error {
	ctx := context.Background()
	warmPool(b, db, warm)
	status, err := db.DB.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer status.Close()
	// SHOW GLOBAL STATUS is itself a statement; measure what one adds.
	q0 := questions(b, status)
	showCost := questions(b, status) - q0

	durs := make([]time.Duration, b.N)
	errs := make([]error, b.N)
	before := serverCounters(b, status)
	client0, server0 := cpuTimes()
	b.ResetTimer()
	run(func(i int, op func() error) {
		start := time.Now()
		errs[i] = op()
		durs[i] = time.Since(start)
	})
	b.StopTimer()
	client1, server1 := cpuTimes()
	after := serverCounters(b, status)

	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	slices.Sort(durs)
	b.ReportMetric(float64(failed)/float64(b.N), "errors/op")
	b.ReportMetric(float64(after["Questions"]-before["Questions"]-showCost)/float64(b.N), "stmts/op")
	b.ReportMetric(float64(after["Com_rollback"]-before["Com_rollback"])/float64(b.N), "rollbacks/op")
	b.ReportMetric(ms(percentile(durs, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(durs, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(durs, 1)), "max-ms")
	b.ReportMetric(float64((client1-client0).Microseconds())/float64(b.N), "client-us/op")
	if server1 > 0 {
		b.ReportMetric(float64((server1-server0).Microseconds())/float64(b.N), "server-us/op")
	}
	return errs
}

// runWorkers runs f(i) for i in [0, n) on workers goroutines.
func runWorkers(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// runBursts runs f(burst, i) for i in [0, n) in bursts of size goroutines
// (the last one smaller) that are all started, then released together
// through a channel; a burst ends when all of it has returned.
func runBursts(n, size int, f func(burst, i int)) {
	for burst, first := 0, 0; first < n; burst, first = burst+1, first+size {
		var ready, done sync.WaitGroup
		release := make(chan struct{})
		for i := first; i < min(first+size, n); i++ {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				ready.Done()
				<-release
				f(burst, i)
			}()
		}
		ready.Wait()
		close(release)
		done.Wait()
	}
}

// warmPool opens n connections in db's pool and leaves them idle.
func warmPool(b *testing.B, db *sqlx.DB, n int) {
	b.Helper()
	ctx := context.Background()
	conns := make([]*sql.Conn, 0, n)
	for range n {
		c, err := db.DB.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.PingContext(ctx); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
}

// questions returns the server's global Questions counter.
func questions(b *testing.B, conn *sql.Conn) int { return serverCounters(b, conn)["Questions"] }

// serverCounters reads the server's global Questions (statements) and
// Com_rollback (transactions rolled back: failed or retried attempts).
func serverCounters(b *testing.B, conn *sql.Conn) map[string]int {
	b.Helper()
	rows, err := conn.QueryContext(context.Background(),
		`SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_rollback')`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var name string
		var v int
		if err := rows.Scan(&name, &v); err != nil {
			b.Fatal(err)
		}
		out[name] = v
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return out
}

// percentile returns the nearest-rank p-quantile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchCounters counts retries (by cause) and surfaced errors (by kind) of
// one run.
type benchCounters struct {
	mu      sync.Mutex
	retries map[string]int
	errs    map[string]int
	samples []string // distinct surfaced error texts, a few
}

type benchCountersKey struct{}

func (c *benchCounters) retry(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retries[errKind(cause)]++
}

func (c *benchCounters) retryCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.retries {
		n += v
	}
	return n
}

func (c *benchCounters) surfaced(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs[errKind(err)]++
	if msg := err.Error(); len(c.samples) < 3 && !slices.Contains(c.samples, msg) {
		c.samples = append(c.samples, msg)
	}
}

// report counts the errors the timed operations returned (errs, as measured
// returns them), reports attempts/op (b.N operations plus their retries) and
// logs the retries and errors.
func (c *benchCounters) report(b *testing.B, shape string, errs []error) {
	b.Helper()
	for _, err := range errs {
		if err != nil {
			c.surfaced(err)
		}
	}
	b.ReportMetric(float64(b.N+c.retryCount())/float64(b.N), "attempts/op")
	c.log(b, shape, b.N)
}

// log reports what was retried and what failed; keystore must surface no
// error, so any it does is logged loudly with its text.
func (c *benchCounters) log(b *testing.B, shape string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.retries) > 0 {
		b.Logf("N=%d retries by cause: %s", n, kinds(c.retries))
	}
	if len(c.errs) == 0 {
		return
	}
	prefix := ""
	if strings.HasPrefix(shape, "keystore") {
		prefix = "KEYSTORE SURFACED ERRORS (must be zero): "
	}
	b.Logf("%sN=%d errors by kind: %s", prefix, n, kinds(c.errs))
	for _, s := range c.samples {
		b.Logf("%s  e.g. %s", prefix, s)
	}
}

// noteRetry records that a baseline is about to run its transaction again
// after cause.
func noteRetry(ctx context.Context, cause error) {
	if c, ok := ctx.Value(benchCountersKey{}).(*benchCounters); ok {
		c.retry(cause)
	}
}

func errKind(err error) string {
	switch {
	case keystore.IsDuplicateKey(err):
		return "1062"
	case keystore.IsDeadlock(err):
		return "1213"
	case errors.Is(err, keystore.ErrRetriesExhausted):
		return "retries-exhausted"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "context"
	}
	return "other"
}

func kinds(m map[string]int) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s×%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// The baselines, on the real keystore tables. Ids are "b"-prefixed UUIDv7s
// (time-ordered, like the library's); key hashes are SHA-256 of 16 random
// bytes.

func seedNaive(ctx context.Context, db *sqlx.DB, workspace, externalID string) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // sends nothing after Commit
	identityID, err := seedIdentity(ctx, db, tx, workspace, externalID, false)
	if err != nil {
		return err
	}
	if err := insertBenchKey(ctx, tx, workspace, identityID); err != nil {
		return err
	}
	return tx.Commit()
}

// seedIdentity is the seed's find-then-insert of an identity in tx: a plain
// read, and an INSERT when it missed. With reread, as the seed's fix did on
// its read-only connection, a duplicate on that INSERT is answered by
// reading again outside tx's snapshot (on db); if that misses too, the
// duplicate is returned, for the caller to retry the whole transaction.
func seedIdentity(ctx context.Context, db *sqlx.DB, tx *sqlx.Tx, workspace, externalID string, reread bool) (string, error) {
	identityID, err := findBenchIdentity(ctx, tx, workspace, externalID)
	if !errors.Is(err, sql.ErrNoRows) {
		return identityID, err
	}
	identityID, err = insertBenchIdentity(ctx, tx, workspace, externalID, false)
	if reread && keystore.IsDuplicateKey(err) {
		if id, findErr := findBenchIdentity(ctx, db, workspace, externalID); findErr == nil {
			return id, nil
		} else if !errors.Is(findErr, sql.ErrNoRows) {
			return "", findErr
		}
	}
	return identityID, err
}

// seedRetry3 is the seed's fix; with audit it also writes the audit event
// that keystore writes, for a like-for-like comparison.
func seedRetry3(audit bool) baseline {
	return func(ctx context.Context, db *sqlx.DB, workspace, externalID string) error {
		return retry3(ctx, func() error { return seedRetryAttempt(ctx, db, workspace, externalID, audit) })
	}
}

// retry3 is the seed's retry: attempt up to 3 times, at once, while it fails
// with 1062 or 1213.
func retry3(ctx context.Context, attempt func() error) error {
	var err error
	for i := 1; i <= 3; i++ {
		if i > 1 {
			noteRetry(ctx, err)
		}
		if err = attempt(); err == nil || !dupOrDeadlock(err) {
			return err
		}
	}
	return err
}

func seedRetryAttempt(ctx context.Context, db *sqlx.DB, workspace, externalID string, audit bool) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	identityID, err := seedIdentity(ctx, db, tx, workspace, externalID, true)
	if err != nil {
		return err
	}
	if err := insertBenchKey(ctx, tx, workspace, identityID); err != nil {
		return err
	}
	if audit {
		_, err := tx.ExecContext(ctx, `INSERT INTO keystore_audit_events (id, workspace_id, event, identity_id, created_at)
			VALUES (?, ?, 'key.create', ?, ?)`, benchID("bevt"), workspace, identityID, time.Now().UTC())
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}

func upsertRetry10(ctx context.Context, db *sqlx.DB, workspace, externalID string) error {
	var err error
	for attempt := 1; attempt <= 10; attempt++ {
		if attempt > 1 {
			noteRetry(ctx, err)
			backoff := 50 * time.Millisecond
			if attempt > 2 {
				backoff = 100 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
		}
		if err = upsertAttempt(ctx, db, workspace, externalID); err == nil || !dupOrDeadlock(err) {
			return err
		}
	}
	return err
}

func upsertAttempt(ctx context.Context, db *sqlx.DB, workspace, externalID string) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := insertBenchIdentity(ctx, tx, workspace, externalID, true); err != nil {
		return err
	}
	identityID, err := findBenchIdentity(ctx, tx, workspace, externalID)
	if err != nil {
		return err
	}
	if err := insertBenchKey(ctx, tx, workspace, identityID); err != nil {
		return err
	}
	return tx.Commit()
}

func floorInsert(ctx context.Context, db *sqlx.DB, workspace, _ string) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := insertBenchKey(ctx, tx, workspace, nil); err != nil {
		return err
	}
	return tx.Commit()
}

func floorIdentityInsert(ctx context.Context, db *sqlx.DB, workspace, externalID string) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	id, err := insertBenchIdentity(ctx, tx, workspace, externalID, false)
	if err != nil {
		return err
	}
	if err := insertBenchKey(ctx, tx, workspace, id); err != nil {
		return err
	}
	return tx.Commit()
}

func dupOrDeadlock(err error) bool { return keystore.IsDuplicateKey(err) || keystore.IsDeadlock(err) }

// findBenchIdentity is a plain (consistent, non-locking) read.
func findBenchIdentity(ctx context.Context, q sqlx.QueryerContext, workspace, externalID string) (string, error) {
	var id string
	err := sqlx.GetContext(ctx, q, &id, `SELECT id FROM keystore_identities
		WHERE workspace_id = ? AND external_id = ? AND live = 1`, workspace, externalID)
	return id, err
}

// insertBenchIdentity inserts a live identity; with upsert, a live one that
// exists is left as it is (ON DUPLICATE KEY UPDATE updated_at = updated_at).
func insertBenchIdentity(ctx context.Context, tx *sqlx.Tx, workspace, externalID string, upsert bool) (string, error) {
	id := benchID("bid")
	now := time.Now().UTC()
	query := `INSERT INTO keystore_identities (id, workspace_id, external_id, live, created_at, updated_at)
		VALUES (?, ?, ?, 1, ?, ?)`
	if upsert {
		query += ` ON DUPLICATE KEY UPDATE updated_at = updated_at`
	}
	_, err := tx.ExecContext(ctx, query, id, workspace, externalID, now, now)
	return id, err
}

// insertBenchKey inserts a key row; identityID is a string or nil.
func insertBenchKey(ctx context.Context, tx *sqlx.Tx, workspace string, identityID any) error {
	var secret [16]byte
	_, _ = rand.Read(secret[:])
	hash := sha256.Sum256(secret[:])
	now := time.Now().UTC()
	_, err := tx.ExecContext(ctx, `INSERT INTO keystore_keys
		(id, workspace_id, key_space_id, hash, start, identity_id, enabled, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)`,
		benchID("bkey"), workspace, benchKeySpace, hash[:], "b_"+hex.EncodeToString(secret[:2]), identityID, now, now)
	return err
}

func benchID(prefix string) string {
	u := uuid.Must(uuid.NewV7())
	return prefix + "_" + hex.EncodeToString(u[:])
}

// The mixed-order scenario: the deadlock-prone mix of issue 4 (e).

const (
	mixedPerms = 6  // permission slugs per key
	mixedEvery = 50 // ops per generation of slugs: new ones after that many
)

// mixedBaseline creates a key with perms and rls in the order given.
type mixedBaseline func(ctx context.Context, db *sqlx.DB, workspace string, perms []string, rls []keystore.Ratelimit) error

type mixedShape struct {
	name string
	fn   mixedBaseline // nil for keystore
	opts []keystore.Option
}

// mixedShapes: keystore (CreateKey, which sorts the slugs and creates the
// missing ones in one INSERT IGNORE), the same without audit, and the naive
// approach to permissions (see seedPermsAttempt) without retry
// (seed-naive-perms: every deadlock is an error) and with the seed's retry
// (seed-retry3-perms).
func mixedShapes() []mixedShape {
	return []mixedShape{
		{name: "keystore"},
		{name: "keystore-noaudit", opts: []keystore.Option{keystore.WithoutAudit()}},
		{name: "seed-naive-perms", fn: seedPermsAttempt},
		{name: "seed-retry3-perms", fn: seedRetry3Perms},
	}
}

// mixedRequest is op i's permissions and ratelimits: the 6 slugs of
// generation i/50, shared by every op of the generation whatever its worker,
// and 2 ratelimits, both reversed for odd ops. runWorkers hands out ops in
// order, so the ops in flight at any moment are about half odd, half even,
// as if odd and even workers used opposite orders.
func mixedRequest(i int) ([]string, []keystore.Ratelimit) {
	perms := make([]string, mixedPerms)
	for k := range perms {
		perms[k] = fmt.Sprintf("mix.g%d.p%d", i/mixedEvery, k)
	}
	rls := []keystore.Ratelimit{{Name: "per-second", Limit: 10, Duration: time.Second},
		{Name: "per-minute", Limit: 300, Duration: time.Minute}}
	if i%2 == 1 {
		slices.Reverse(perms)
		slices.Reverse(rls)
	}
	return perms, rls
}

func benchMixedOrder(b *testing.B, workers int, sh mixedShape) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ctx, store, db, counters := newBenchStore(ctx, b, sh.opts...)
	op := func(ctx context.Context, perms []string, rls []keystore.Ratelimit) error {
		_, err := store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: benchWorkspace, KeySpaceID: benchKeySpace,
			Permissions: perms, Ratelimits: rls})
		return err
	}
	if sh.fn != nil {
		op = func(ctx context.Context, perms []string, rls []keystore.Ratelimit) error {
			return sh.fn(ctx, db, benchWorkspace, perms, rls)
		}
	}
	// The baseline reads on a second connection while its transaction
	// holds one.
	errs := measured(b, db, min(2*workers, 90), func(timed func(i int, op func() error)) {
		runWorkers(b.N, workers, func(i int) {
			perms, rls := mixedRequest(i)
			timed(i, func() error { return op(ctx, perms, rls) })
		})
	})
	counters.report(b, sh.name, errs)
}

// seedRetry3Perms is seedPermsAttempt retried the seed's way: the whole
// transaction up to 3 times on 1062/1213, without backoff.
func seedRetry3Perms(ctx context.Context, db *sqlx.DB, workspace string, perms []string, rls []keystore.Ratelimit) error {
	return retry3(ctx, func() error { return seedPermsAttempt(ctx, db, workspace, perms, rls) })
}

// seedPermsAttempt is the naive approach to permissions: in one
// transaction, for each slug in the order given, a plain INSERT of the
// permission and, on a duplicate, a read of its id outside the transaction
// (as seedRetryAttempt reads the identity); then the key row (with the JSON
// columns CreateKey writes: permissions, ratelimits) and one link row per
// permission. Two callers inserting the same new slugs in
// opposite orders each hold one the other needs next: a deadlock.
func seedPermsAttempt(ctx context.Context, db *sqlx.DB, workspace string, perms []string, rls []keystore.Ratelimit) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().UTC()
	ids := make([]string, len(perms))
	for k, slug := range perms {
		id := benchID("bperm")
		_, err := tx.ExecContext(ctx, `INSERT INTO keystore_permissions (id, workspace_id, slug, created_at)
			VALUES (?, ?, ?, ?)`, id, workspace, slug, now)
		if keystore.IsDuplicateKey(err) {
			var found string
			if findErr := db.GetContext(ctx, &found, `SELECT id FROM keystore_permissions
				WHERE workspace_id = ? AND slug = ?`, workspace, slug); findErr == nil {
				id, err = found, nil
			} else if !errors.Is(findErr, sql.ErrNoRows) {
				err = findErr
			}
		}
		if err != nil {
			return err
		}
		ids[k] = id
	}
	permsJSON, err := json.Marshal(perms)
	if err != nil {
		return err
	}
	type rlJSON struct {
		Name   string `json:"n"`
		Limit  int64  `json:"l"`
		Millis int64  `json:"d"`
		Auto   int    `json:"a"`
	}
	rows := make([]rlJSON, len(rls))
	for k, rl := range rls {
		rows[k] = rlJSON{Name: rl.Name, Limit: rl.Limit, Millis: rl.Duration.Milliseconds()}
	}
	rlsJSON, err := json.Marshal(rows)
	if err != nil {
		return err
	}
	var secret [16]byte
	_, _ = rand.Read(secret[:])
	hash := sha256.Sum256(secret[:])
	keyID := benchID("bkey")
	if _, err := tx.ExecContext(ctx, `INSERT INTO keystore_keys
		(id, workspace_id, key_space_id, hash, start, enabled, permissions, ratelimits, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)`,
		keyID, workspace, benchKeySpace, hash[:], "b_"+hex.EncodeToString(secret[:2]), string(permsJSON), string(rlsJSON), now, now); err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `INSERT INTO keystore_key_permissions (key_id, permission_id) VALUES (?, ?)`, keyID, id); err != nil {
			return err
		}
	}
	return tx.Commit()
}
