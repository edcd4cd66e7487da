// Package keystoretest gives tests a real MariaDB database: a fresh, empty
// database per call, dropped when the test ends.
//
//	func TestMain(m *testing.M) { keystoretest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		store := keystoretest.NewStore(t) // migrated, on its own database
//		...
//	}
//
// The server is the one named by the environment variable KEYSTORE_TEST_DSN,
// a go-sql-driver/mysql DSN of a user allowed to CREATE and DROP databases,
// for example "root:secret@tcp(127.0.0.1:3306)/". Without it, the first call
// in a test binary starts a throwaway MariaDB server of its own (this needs
// the Debian package mariadb-server), which [Main] stops when the tests are
// done. If no server can be had, the test fails; it is never skipped.
//
// All functions are safe to call from parallel tests.
package keystoretest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/jmoiron/sqlx"
)

// EnvDSN is the environment variable that names an existing server to use
// instead of starting one.
const EnvDSN = "KEYSTORE_TEST_DSN"

// setupTimeout bounds starting the server, creating or dropping a database,
// and migrating.
const setupTimeout = 2 * time.Minute

var (
	setupOnce sync.Once
	setupErr  error
	server    *mariadb.Server // nil when KEYSTORE_TEST_DSN is used
	base      *mysql.Config   // the server, without a database
	admin     *sql.DB         // connections to base, for CREATE and DROP DATABASE
	vitess    bool            // the server is a Vitess vtgate
)

// keyspaceTimeout bounds the wait for a database created through Vitess to
// serve (see [waitServing]).
const keyspaceTimeout = 30 * time.Second

// setup finds or starts the server, once per process, failing tb if it
// cannot.
func setup(tb testing.TB) {
	tb.Helper()
	if err := start(); err != nil {
		tb.Fatalf("keystoretest: no MariaDB server: %v", err)
	}
}

// start finds or starts the server, once per process, and returns why it
// could not.
func start() error {
	setupOnce.Do(func() {
		dsn := os.Getenv(EnvDSN)
		if dsn == "" {
			ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
			defer cancel()
			if server, setupErr = mariadb.Start(ctx); setupErr != nil {
				return
			}
			dsn = server.DSN("")
		}
		if base, setupErr = mysql.ParseDSN(dsn); setupErr != nil {
			setupErr = fmt.Errorf("%s: %w", EnvDSN, setupErr)
			return
		}
		base.DBName = ""
		base.ParseTime = true
		base.InterpolateParams = true
		// A DROP DATABASE blocked by a transaction that a test left open
		// fails after a minute rather than waiting forever.
		adminCfg := base.Clone()
		if adminCfg.Params == nil {
			adminCfg.Params = map[string]string{}
		}
		adminCfg.Params["lock_wait_timeout"] = "60"
		var conn driver.Connector
		if conn, setupErr = mysql.NewConnector(adminCfg); setupErr != nil {
			return
		}
		admin = sql.OpenDB(conn)
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		var version string
		if setupErr = admin.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); setupErr != nil {
			return
		}
		vitess = strings.Contains(version, "Vitess")
	})
	return setupErr
}

// AdminDSN returns a DSN for the test server with no database selected, for
// tests that need server-level access (SHOW GLOBAL STATUS, SET GLOBAL ...).
// It has parseTime and interpolateParams on.
func AdminDSN(tb testing.TB) string {
	tb.Helper()
	setup(tb)
	return base.FormatDSN()
}

// DSN creates a database with a random name (kstest_ and 16 hex digits) and
// returns a DSN for it, with parseTime and interpolateParams on and the
// other parameters of KEYSTORE_TEST_DSN kept. The database is dropped when
// tb and its subtests have finished.
func DSN(tb testing.TB) string {
	tb.Helper()
	dsn, drop, err := Database()
	if err != nil {
		tb.Fatalf("keystoretest: %v", err)
	}
	tb.Cleanup(func() {
		if err := drop(); err != nil {
			tb.Errorf("keystoretest: %v", err)
		}
	})
	return dsn
}

// Database is [DSN] for code that has no testing.TB, such as a TestMain or
// a runnable example: it creates the database and returns its DSN and a
// function that drops it, which the caller must call when done.
func Database() (dsn string, drop func() error, err error) {
	if err := start(); err != nil {
		return "", nil, fmt.Errorf("no MariaDB server: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, err
	}
	name := "kstest_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE `"+name+"`"); err != nil {
		return "", nil, err
	}
	if vitess {
		if err := waitServing(ctx, name); err != nil {
			admin.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`")
			return "", nil, err
		}
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		_, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`")
		return err
	}
	cfg := base.Clone()
	cfg.DBName = name
	return cfg.FormatDSN(), drop, nil
}

// waitServing waits, for at most keyspaceTimeout, until the keyspace that
// Vitess made of the new database name serves queries. vtgate answers CREATE
// DATABASE once the keyspace is in its topology, before its primary tablet
// is known to be healthy; a test's first statement then failed with "no
// healthy tablet available". The query probes the keyspace's primary:
// vtgate sends a query on information_schema naming a schema to that
// keyspace.
func waitServing(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, keyspaceTimeout)
	defer cancel()
	for {
		var n int
		err := admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ?", name).Scan(&n)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Vitess keyspace %s not serving after %v: %w", name, keyspaceTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DB opens a pool on a fresh database from [DSN] and pings it. The pool
// allows 100 open and 100 idle connections, enough for tests that run many
// goroutines at once without reconnecting. It is closed when tb finishes,
// before the database is dropped.
func DB(tb testing.TB) *sqlx.DB {
	tb.Helper()
	db, err := sqlx.Open("mysql", DSN(tb))
	if err != nil {
		tb.Fatalf("keystoretest: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(100)
	db.SetMaxIdleConns(100)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		tb.Fatalf("keystoretest: %v", err)
	}
	return db
}

// NewStore returns a [keystore.Store] made with opts on a fresh database
// from [DB], with the schema migrated.
func NewStore(tb testing.TB, opts ...keystore.Option) *keystore.Store {
	tb.Helper()
	store, err := keystore.New(DB(tb), opts...)
	if err != nil {
		tb.Fatalf("keystoretest: keystore.New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := store.Migrate(ctx); err != nil {
		tb.Fatalf("keystoretest: Migrate: %v", err)
	}
	return store
}

// Main runs the tests, stops the server if this package started one, and
// exits with the tests' status. Call it from TestMain:
//
//	func TestMain(m *testing.M) { keystoretest.Main(m) }
//
// Without it the server still dies with the test process (on Linux), but
// its temporary directory is left until the next server starts.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit: it runs the tests, closes this package's
// connections, stops the server if it started one, and returns the tests'
// status, for a TestMain that has more to do afterwards (a leak check).
func Run(m *testing.M) int {
	code := m.Run()
	if admin != nil {
		admin.Close()
	}
	if server != nil {
		if err := server.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "keystoretest:", err)
		}
	}
	return code
}
