package clustertest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/testutil"
	"github.com/jmoiron/sqlx"
)

// galeraEnv is a fresh database on the shared cluster and one Store per
// node.
type galeraEnv struct {
	stores  []*keystore.Store
	dbs     []*sqlx.DB // root on each node, reads wait for the cluster (wsrep_sync_wait)
	retries *atomic.Int64
	most    *atomic.Int64 // most retries of one call
	// notDeadlock counts retries for another cause than 1213; lastOther
	// holds the last such error.
	notDeadlock *atomic.Int64
	lastOther   *atomic.Value
}

func newGaleraEnv(t *testing.T, opts ...keystore.Option) galeraEnv {
	t.Helper()
	c := galera(t)
	name := newDatabase(t, c.Nodes[0].DSN(""))
	env := galeraEnv{retries: new(atomic.Int64), most: new(atomic.Int64), notDeadlock: new(atomic.Int64), lastOther: new(atomic.Value)}
	onRetry := keystore.OnRetry(func(attempt int, err error) {
		env.retries.Add(1)
		if !keystore.IsDeadlock(err) {
			env.notDeadlock.Add(1)
			env.lastOther.Store(err.Error())
		}
		for m := env.most.Load(); int64(attempt) > m && !env.most.CompareAndSwap(m, int64(attempt)); m = env.most.Load() {
		}
	})
	for i, node := range c.Nodes {
		// The lock-wait timeout docs/operations.md recommends on Galera: twice
		// in about thirty runs an INSERT waited the default 50 s on a lock
		// that a stalled transaction held, once right after a node died.
		db := open(t, node.DSN(name)+"&innodb_lock_wait_timeout=5")
		opts := append([]keystore.Option{keystore.WithRetryOptions(onRetry)}, opts...)
		var s *keystore.Store
		if i == 0 {
			s = newStore(t, db, opts...) // migrates
		} else {
			var err error
			if s, err = keystore.New(db, opts...); err != nil {
				t.Fatal(err)
			}
		}
		env.stores = append(env.stores, s)
		env.dbs = append(env.dbs, open(t, node.DSN(name)+"&wsrep_sync_wait=1"))
	}
	// The migration's DDL reaches the other nodes through their appliers,
	// after it returned on the first: a test writing at once on another
	// node once found a table missing there. A read with wsrep_sync_wait
	// waits until its node has applied everything committed before it.
	// (Connections without a database: one naming it fails on a node that
	// has not applied CREATE DATABASE yet.)
	const tables = `SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?`
	var want int
	for i, node := range c.Nodes {
		n := count(t, open(t, node.DSN("")+"&wsrep_sync_wait=1"), tables, name)
		if i == 0 {
			want = n
		}
		if n != want || n == 0 {
			t.Fatalf("node %d has %d of the %d tables after the migration", i, n, want)
		}
	}
	return env
}

// logOtherCauses logs the retries for another cause than a deadlock (1213).
func (env galeraEnv) logOtherCauses(t testing.TB) {
	t.Helper()
	if n := env.notDeadlock.Load(); n > 0 {
		t.Logf("%d retries were not for 1213; the last: %v", n, env.lastOther.Load())
	} else {
		t.Logf("every retry was for 1213")
	}
}

// conflicts sums, over the nodes, the transactions aborted by the cluster
// so far: certification failures and brute-force aborts.
func conflicts(t testing.TB, env galeraEnv) int64 {
	t.Helper()
	var total int64
	for _, db := range env.dbs {
		for _, name := range []string{"wsrep_local_cert_failures", "wsrep_local_bf_aborts"} {
			var n int64
			var v string
			if err := db.QueryRow(`SHOW GLOBAL STATUS LIKE '`+name+`'`).Scan(&v, &n); err != nil {
				t.Fatal(err)
			}
			total += n
		}
	}
	return total
}

// 64 goroutines over three nodes create keys for one new owner and the same
// new permissions: every call succeeds, one identity and one row per
// permission exist cluster-wide, and the cluster really aborted
// transactions on the way (which the Store retried).
func TestGaleraHotBurst(t *testing.T) {
	env := newGaleraEnv(t)
	ctx := context.Background()
	const workers = 64
	before := conflicts(t, env)
	rounds := 0
	for round := 0; round < 3 || conflicts(t, env) == before && round < 10; round++ {
		rounds++
		ext := fmt.Sprintf("owner-%d", round)
		perms := []string{fmt.Sprintf("r%d.read", round), fmt.Sprintf("r%d.write", round), "shared"}
		if round%2 == 1 {
			perms = nil // a key without permissions is written in one statement
		}
		created := make([]keystore.CreatedKey, workers)
		failOnErrors(t, parallel(workers, func(i int) (err error) {
			created[i], err = env.stores[i%3].CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
				ExternalID: ext, Permissions: perms, Ratelimits: []keystore.Ratelimit{{Name: "rps", Limit: 10, Duration: time.Second}}})
			return err
		}))
		for node, db := range env.dbs {
			if n := count(t, db, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = ?`, ext); n != 1 {
				t.Fatalf("round %d, node %d: %d identities, want 1", round, node, n)
			}
			for _, p := range perms {
				if n := count(t, db, `SELECT COUNT(*) FROM keystore_permissions WHERE slug = ?`, p); n != 1 {
					t.Fatalf("round %d, node %d: %d rows of permission %s, want 1", round, node, n, p)
				}
			}
			if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys k JOIN keystore_identities i ON i.id = k.identity_id
				WHERE i.external_id = ? AND COALESCE(JSON_LENGTH(k.permissions), 0) = ? AND JSON_LENGTH(k.ratelimits) = 1`, ext, len(perms)); n != workers {
				t.Fatalf("round %d, node %d: %d complete keys of the owner, want %d", round, node, n, workers)
			}
			if n := count(t, db, `SELECT COUNT(*) FROM keystore_key_permissions kp JOIN keystore_keys k ON k.id = kp.key_id
				JOIN keystore_identities i ON i.id = k.identity_id WHERE i.external_id = ?`, ext); n != len(perms)*workers {
				t.Fatalf("round %d, node %d: %d permission links, want %d", round, node, n, len(perms)*workers)
			}
		}
		for _, c := range created {
			if c.IdentityID != created[0].IdentityID {
				t.Fatalf("round %d: keys got identities %s and %s", round, c.IdentityID, created[0].IdentityID)
			}
		}
	}
	aborted := conflicts(t, env) - before
	t.Logf("%d rounds of %d creators over 3 nodes: %d transactions aborted by the cluster, %d retries, at most %d in one call",
		rounds, workers, aborted, env.retries.Load(), env.most.Load())
	env.logOtherCauses(t)
	if aborted == 0 || env.retries.Load() == 0 {
		t.Fatalf("no conflict between nodes in %d rounds (%d aborts, %d retries): the test proved nothing", rounds, aborted, env.retries.Load())
	}
}

// Credits of one key spent from all three nodes at once. With the setting
// docs/operations.md gives cluster users (MaxAttempts(galeraAttempts)), every caller
// gets an answer, exactly as many are valid as there were credits, and
// every node ends with none left. With the defaults, calls may run out of
// attempts: how many is logged, and each such error is classified and
// spends nothing.
func TestGaleraSpendOneKeyFromEveryNode(t *testing.T) {
	t.Run("cluster setting", func(t *testing.T) {
		if exhausted := spendFromEveryNode(t, keystore.WithRetryOptions(keystore.MaxAttempts(galeraAttempts))); exhausted != 0 {
			t.Fatalf("%d calls ran out of %d attempts", exhausted, galeraAttempts)
		}
	})
	t.Run("defaults", func(t *testing.T) { spendFromEveryNode(t) })
}

// spendFromEveryNode spends the credits of one key with 240 callers spread
// over the nodes, checks that no credit is lost or spent twice, and returns
// how many calls ran out of attempts.
func spendFromEveryNode(t *testing.T, opts ...keystore.Option) (exhausted int64) {
	env := newGaleraEnv(t, opts...)
	ctx := context.Background()
	const credits, callers = 150, 240
	c, err := env.stores[0].CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: credits}})
	if err != nil {
		t.Fatal(err)
	}
	count(t, env.dbs[1], `SELECT COUNT(*) FROM keystore_keys`) // wait until every node has it
	count(t, env.dbs[2], `SELECT COUNT(*) FROM keystore_keys`)
	before := conflicts(t, env)
	var valid, over, outOfAttempts atomic.Int64
	failOnErrors(t, parallel(callers, func(i int) error {
		v, err := env.stores[i%3].VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
		switch {
		case errors.Is(err, keystore.ErrRetriesExhausted) && keystore.IsDeadlock(err):
			outOfAttempts.Add(1)
		case err != nil:
			return err
		case v.Valid:
			valid.Add(1)
		case v.Code == keystore.CodeUsageExceeded:
			over.Add(1)
		default:
			return fmt.Errorf("verification %s", v.Code)
		}
		return nil
	}))
	t.Logf("%d verifications over 3 nodes: %d aborted by the cluster, %d retries, at most %d in one call; %d ran out of attempts",
		callers, conflicts(t, env)-before, env.retries.Load(), env.most.Load(), outOfAttempts.Load())
	env.logOtherCauses(t)
	left := -1
	for node, db := range env.dbs {
		n := count(t, db, `SELECT remaining FROM keystore_keys WHERE id = ?`, c.KeyID)
		if left >= 0 && n != left {
			t.Fatalf("node %d has %d credits left, node 0 %d", node, n, left)
		}
		left = n
	}
	if int(valid.Load())+left != credits {
		t.Fatalf("%d valid verifications and %d credits left, from %d", valid.Load(), left, credits)
	}
	if outOfAttempts.Load() == 0 && (left != 0 || over.Load() != callers-credits) {
		t.Fatalf("every call answered, but %d credits left and %d over the limit, want 0 and %d", left, over.Load(), callers-credits)
	}
	return outOfAttempts.Load()
}

// A node cut off from the cluster refuses COMMIT and ROLLBACK alike (1047),
// and the transaction stays open on its connection: back in the pool, the
// next BEGIN on it would commit it after all (seen here before the fix).
// WithRetryTx closes such a connection instead, so the server rolls the
// transaction back, and the caller's error is the whole truth.
func TestGaleraNodeNotReadyCommits(t *testing.T) {
	c := galera(t)
	name := newDatabase(t, c.Nodes[0].DSN(""))
	node3 := open(t, c.Nodes[2].DSN(name))
	node3.SetMaxOpenConns(1) // the next transaction gets the same connection, unless it was closed
	admin := open(t, c.Nodes[2].DSN(""))
	check := open(t, c.Nodes[0].DSN(name)+"&wsrep_sync_wait=1")
	ctx := context.Background()
	if _, err := check.Exec(`CREATE TABLE t (id INT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	// Node 3 has the table once this read returns. Its connection names no
	// database: one that does fails (1049) while node 3 has not yet applied
	// CREATE DATABASE, before wsrep_sync_wait is even set (seen in CI).
	count(t, open(t, c.Nodes[2].DSN("")+"&wsrep_sync_wait=1"), `SELECT COUNT(*) FROM `+name+`.t`)
	ready := func(want string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			var name, v string
			if err := admin.QueryRow(`SHOW STATUS LIKE 'wsrep_ready'`).Scan(&name, &v); err == nil && v == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node 3 never became wsrep_ready=%s", want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	_, err := keystore.WithRetryTx(ctx, node3, func(ctx context.Context, tx *sqlx.Tx) (struct{}, error) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
			return struct{}{}, err
		}
		if _, err := admin.Exec(`SET GLOBAL wsrep_provider_options='gmcast.isolate=1'`); err != nil {
			return struct{}{}, err
		}
		ready("OFF")
		return struct{}{}, nil
	}, keystore.MaxAttempts(1))
	if _, err := admin.Exec(`SET GLOBAL wsrep_provider_options='gmcast.isolate=0'`); err != nil {
		t.Fatal(err)
	}
	ready("ON")
	rejoin, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitSynced(rejoin); err != nil {
		t.Fatal(err)
	}
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1047 || errors.Is(err, keystore.ErrAmbiguousCommit) {
		t.Fatalf("COMMIT on a node cut off: %v; want error 1047, not ambiguous", err)
	}
	if n := count(t, admin, `SELECT COUNT(*) FROM information_schema.innodb_trx`); n != 0 {
		t.Fatalf("%d transactions still open on node 3", n)
	}
	if _, err := keystore.WithRetryTx(ctx, node3, func(ctx context.Context, tx *sqlx.Tx) (sql.Result, error) {
		return tx.ExecContext(ctx, `INSERT INTO t VALUES (2)`)
	}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, check, `SELECT COUNT(*) FROM t WHERE id = 1`); n != 0 {
		t.Fatal("the transaction whose COMMIT failed was applied later")
	}
	if n := count(t, check, `SELECT COUNT(*) FROM t WHERE id = 2`); n != 1 {
		t.Fatal("the next transaction on node 3 was not applied")
	}
}

// galeraAttempts is what a cluster user sets for keys spent from several
// nodes (see docs/operations.md, "Galera"): TestGaleraSpendOneKeyFromEveryNode logs how
// many attempts calls needed.
const galeraAttempts = 30

// A node killed mid-load: callers on the surviving nodes go on; callers on
// the dead one get classified errors; nothing that was reported as written
// is missing, and nothing is half-written. The node then rejoins.
func TestGaleraNodeKilled(t *testing.T) {
	env := newGaleraEnv(t)
	c := galera(t)
	ctx := context.Background()
	stop := make(chan struct{})
	var mu sync.Mutex
	var ok []keystore.CreatedKey
	var ambiguous, exhausted, other, deadNodeOK atomic.Int64
	var survivorsOK atomic.Int64
	killed := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.Nodes[2].Kill()
		close(killed)
		time.Sleep(8 * time.Second) // the cluster evicts the dead node after ~4 s; then the others go on
		close(stop)
	}()
	var unexpected []error
	errs := parallel(24, func(i int) error {
		node := i % 3
		for n := 0; ; n++ {
			select {
			case <-stop:
				return nil
			default:
			}
			callCtx, cancel := context.WithTimeout(ctx, time.Minute)
			k, err := env.stores[node].CreateKey(callCtx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
				// every other key without permissions: one statement
				ExternalID: fmt.Sprintf("owner-%d", n%5), Permissions: []string{"p1", "p2"}[:n%2*2]})
			cancel()
			switch {
			case err == nil:
				mu.Lock()
				ok = append(ok, k)
				mu.Unlock()
				if node == 2 {
					deadNodeOK.Add(1)
				} else {
					select {
					case <-killed:
						survivorsOK.Add(1)
					default:
					}
				}
			case node != 2:
				return fmt.Errorf("CreateKey on a surviving node: %w", err)
			case errors.Is(err, keystore.ErrAmbiguousCommit):
				ambiguous.Add(1)
			case errors.Is(err, keystore.ErrRetriesExhausted):
				exhausted.Add(1)
			default:
				mu.Lock()
				unexpected = append(unexpected, err)
				mu.Unlock()
				other.Add(1)
			}
			if node == 2 {
				select {
				case <-killed:
					return nil // one classified error from the dead node is enough
				default:
				}
			}
		}
	})
	failOnErrors(t, errs)
	t.Logf("%d keys created, %d of them on the surviving nodes after the kill; dead node: %d ambiguous commits, %d retries exhausted, %d other errors",
		len(ok), survivorsOK.Load(), ambiguous.Load(), exhausted.Load(), other.Load())
	for _, err := range unexpected {
		t.Errorf("unclassified error from the dead node: %v", err)
	}
	if survivorsOK.Load() <= 16 { // 16 callers on the surviving nodes: each must go on after its first call
		t.Fatalf("%d keys created on the surviving nodes after the kill: they did not go on", survivorsOK.Load())
	}
	db := env.dbs[0]
	for _, k := range ok {
		if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys WHERE id = ? AND identity_id = ? AND COALESCE(JSON_LENGTH(permissions), 0) IN (0, 2)`, k.KeyID, k.IdentityID); n != 1 {
			t.Fatalf("key %s reported created is missing or incomplete on a survivor", k.KeyID)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_keys k WHERE COALESCE(JSON_LENGTH(k.permissions), 0) NOT IN (0, 2)
		OR (SELECT COUNT(*) FROM keystore_key_permissions kp WHERE kp.key_id = k.id) <> COALESCE(JSON_LENGTH(k.permissions), 0)`); n != 0 {
		t.Fatalf("%d keys with a partial permission set", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM (SELECT external_id FROM keystore_identities WHERE live = 1 GROUP BY external_id HAVING COUNT(*) > 1) d`); n != 0 {
		t.Fatalf("%d external ids with more than one live identity", n)
	}
	rejoin, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := c.Nodes[2].Restart(rejoin); err != nil {
		t.Fatalf("restarting the killed node: %v", err)
	}
	if err := c.WaitSynced(rejoin); err != nil {
		t.Fatalf("killed node rejoining: %v", err)
	}
	if _, err := env.stores[2].CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "owner-0"}); err != nil {
		t.Fatalf("CreateKey on the rejoined node: %v", err)
	}
}

// A node cut off from the cluster while a CreateKey's COMMIT is on its way
// to it, the reply lost: the node refuses the COMMIT (1047) and its reads
// until it rejoins, so the Store settles the outcome on that node once it
// has, and the call returns success with its key in the cluster, never
// ErrAmbiguousCommit.
func TestGaleraNodeCutOffMidCommit(t *testing.T) {
	c := galera(t)
	name := newDatabase(t, c.Nodes[0].DSN(""))
	check := open(t, c.Nodes[0].DSN(name)+"&wsrep_sync_wait=1")
	newStore(t, check) // migrates
	admin := open(t, c.Nodes[2].DSN(""))
	l, dsn := testutil.NewLossy(t, c.Nodes[2].DSN(name))
	settles := &testutil.SettleLog{}
	store := newStore(t, open(t, dsn), keystore.WithSettleTimeout(2*time.Minute), keystore.WithLogger(slog.New(settles)))
	ctx := context.Background()
	req := keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u", Permissions: []string{"p.read"}}
	if _, err := store.CreateKey(ctx, req); err != nil {
		t.Fatal(err)
	}

	isolate := func(on int, want string) {
		if _, err := admin.Exec(fmt.Sprintf(`SET GLOBAL wsrep_provider_options='gmcast.isolate=%d'`, on)); err != nil {
			t.Error(err)
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
			var name, v string
			if err := admin.QueryRow(`SHOW STATUS LIKE 'wsrep_ready'`).Scan(&name, &v); err == nil && v == want {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("node 3 never became wsrep_ready=%s", want)
				return
			}
		}
	}
	rejoined := make(chan struct{})
	l.OnFire = func() { // the COMMIT is about to go: cut node 3 off first
		isolate(1, "OFF")
		go func() {
			defer close(rejoined)
			time.Sleep(time.Second)
			isolate(0, "ON")
		}()
	}
	l.Arm(testutil.LoseReply, false)
	start := time.Now()
	k, err := store.CreateKey(ctx, req)
	t.Logf("CreateKey across the cut returned after %v: %v; lost commits settled as committed: %d of %d",
		time.Since(start).Round(time.Millisecond), err, settles.Committed.Load(), settles.Settled())
	<-rejoined
	l.FiredOnce(t)
	rejoin, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitSynced(rejoin); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("CreateKey across the cut: %v", err)
	}
	if n := count(t, check, `SELECT COUNT(*) FROM keystore_keys WHERE id = ?`, k.KeyID); n != 1 {
		t.Errorf("CreateKey succeeded; %d keys of its id on node 1", n)
	}
	if n := count(t, check, `SELECT COUNT(*) FROM keystore_keys`); n != 2 {
		t.Errorf("%d keys on node 1, want 2", n)
	}
	if settles.Settled() != 1 {
		t.Errorf("%d lost commits settled, want 1", settles.Settled())
	}
}
