package clustertest_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/idsafe/keystore/internal/testutil"
	"github.com/jmoiron/sqlx"
)

// Servers are started on first use, once per test binary, and stopped by
// TestMain.
var (
	pairOnce sync.Once
	pair     *mariadb.Replicated
	pairErr  error

	clusterOnce sync.Once
	cluster     *mariadb.Cluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pair != nil {
		pair.Stop()
	}
	if cluster != nil {
		cluster.Stop()
	}
	os.Exit(code)
}

// replicated returns the shared primary and replica.
func replicated(t testing.TB) *mariadb.Replicated {
	t.Helper()
	pairOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pair, pairErr = mariadb.StartReplicated(ctx)
	})
	if pairErr != nil {
		t.Fatalf("starting a primary and a replica: %v", pairErr)
	}
	return pair
}

// galera returns the shared three-node cluster.
func galera(t testing.TB) *mariadb.Cluster {
	t.Helper()
	clusterOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cluster, clusterErr = mariadb.StartGalera(ctx, 3)
		if clusterErr == nil {
			clusterErr = warmUp(ctx, cluster)
		}
	})
	if clusterErr != nil {
		t.Fatalf("starting a Galera cluster: %v", clusterErr)
	}
	return cluster
}

// newDatabase creates a database through admin (a root DSN without a
// database), dropped when the test ends, and returns its name.
func newDatabase(t testing.TB, adminDSN string) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	name := "kstest_" + hex.EncodeToString(b)
	admin := open(t, adminDSN)
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec("DROP DATABASE IF EXISTS " + name) })
	return name
}

// open returns a pool on dsn, closed when the test ends.
func open(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(100)
	db.SetMaxIdleConns(100)
	t.Cleanup(func() { db.Close() })
	return db
}

// parallel, failOnErrors and count: see testutil.
var (
	parallel     = testutil.Parallel
	failOnErrors = testutil.FailOnErrors
	count        = testutil.Count
)

// newStore returns a Store on db with opts, after migrating.
func newStore(t testing.TB, db *sqlx.DB, opts ...keystore.Option) *keystore.Store {
	t.Helper()
	s, err := keystore.New(db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// warmUp returns once every node of c commits conflicting writes promptly.
// Synced is not enough: in about one fresh cluster in fifteen, the writes
// of one node stalled for up to a minute after the start (every attempt
// waiting for a lock, then 1213 or 1205), while the other nodes went on.
// Tests measure the cluster at work, so they start after that has passed:
// rounds of 8 writers per node inserting one row, each round bounded by
// 5 s, until three rounds in a row finish in time.
func warmUp(ctx context.Context, c *mariadb.Cluster) error {
	admin, err := sqlx.Open("mysql", c.Nodes[0].DSN(""))
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE IF NOT EXISTS warmup`); err != nil {
		return err
	}
	if _, err := admin.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS warmup.t (id INT PRIMARY KEY, node INT)`); err != nil {
		return err
	}
	var nodes []*sqlx.DB
	for _, n := range c.Nodes {
		db, err := sqlx.Open("mysql", n.DSN("warmup")+"&wsrep_sync_wait=1&innodb_lock_wait_timeout=5")
		if err != nil {
			return err
		}
		defer db.Close()
		nodes = append(nodes, db)
	}
	for round, inTime := 0, 0; inTime < 3; round++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("warming up the Galera cluster: %w", err)
		}
		roundCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		parallel(8*len(nodes), func(i int) error { // conflicts between nodes (1213) are expected and ignored
			_, err := nodes[i%len(nodes)].ExecContext(roundCtx, `INSERT IGNORE INTO t VALUES (?, ?)`, round, i%len(nodes))
			return err
		})
		if inTime++; roundCtx.Err() != nil {
			inTime = 0 // some write stalled past 5 s
		}
		cancel()
	}
	_, err = admin.ExecContext(ctx, `DROP DATABASE warmup`)
	return err
}
