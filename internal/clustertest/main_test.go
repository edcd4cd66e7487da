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
			go watchStalls(cluster)
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

// watchStalls writes c.Diagnose to stderr (shown when a test fails, or
// with -v) whenever a node has had a transaction open for 10 s or more: no
// test transaction lasts that long, so it is a write stalled, and what
// holds it shows while it does. At most once every 30 s, until the test
// binary exits.
func watchStalls(c *mariadb.Cluster) {
	const limit = 10 // seconds
	var last time.Time
	for range time.Tick(2 * time.Second) {
		oldest := 0
		for _, n := range c.Nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			age, _ := oldestTransaction(ctx, n) // a node killed by a test: 0
			cancel()
			oldest = max(oldest, age)
		}
		if oldest >= limit && time.Since(last) > 30*time.Second {
			last = time.Now()
			fmt.Fprintf(os.Stderr, "GALERA STALL: a transaction open for %d s; the cluster now:\n%s\n",
				oldest, c.Diagnose(context.Background()))
		}
	}
}

// oldestTransaction returns the age in seconds of n's oldest open InnoDB
// transaction (0 if none).
func oldestTransaction(ctx context.Context, n *mariadb.Server) (int, error) {
	if n.Pid() == 0 {
		return 0, fmt.Errorf("node stopped")
	}
	db, err := sqlx.Open("mysql", n.DSN(""))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var age int
	err = db.GetContext(ctx, &age, `SELECT COALESCE(MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW())), 0)
		FROM information_schema.INNODB_TRX`)
	return age, err
}
