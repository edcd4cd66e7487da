package keystoretest_test

import (
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func TestMain(m *testing.M) { keystoretest.Main(m) }

// databaseExists asks the server, through AdminDSN, whether name exists.
func databaseExists(t *testing.T, admin *sqlx.DB, name string) bool {
	t.Helper()
	var n int
	err := admin.Get(&n, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", name)
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestDSNGivesDistinctEmptyDatabasesDroppedAtCleanup(t *testing.T) {
	admin, err := sqlx.Open("mysql", keystoretest.AdminDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	var names []string
	t.Run("sub", func(t *testing.T) {
		for range 2 {
			dsn := keystoretest.DSN(t)
			cfg, err := mysql.ParseDSN(dsn)
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.ParseTime || !cfg.InterpolateParams {
				t.Errorf("DSN %q: parseTime=%v interpolateParams=%v, want both true", dsn, cfg.ParseTime, cfg.InterpolateParams)
			}
			if !strings.HasPrefix(cfg.DBName, "kstest_") || len(cfg.DBName) != len("kstest_")+16 {
				t.Errorf("database name %q, want kstest_ and 16 hex digits", cfg.DBName)
			}
			names = append(names, cfg.DBName)

			db, err := sqlx.Open("mysql", dsn)
			if err != nil {
				t.Fatal(err)
			}
			var current string
			var tables int
			if err := db.QueryRow("SELECT DATABASE(), (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE())").Scan(&current, &tables); err != nil {
				t.Fatal(err)
			}
			db.Close()
			if current != cfg.DBName || tables != 0 {
				t.Errorf("connected to %q with %d tables, want %q with none", current, tables, cfg.DBName)
			}
			if !databaseExists(t, admin, cfg.DBName) {
				t.Errorf("database %s does not exist", cfg.DBName)
			}
		}
		// A table made in one database is not in the other.
		db1 := sqlx.MustOpen("mysql", keystoretest.AdminDSN(t))
		defer db1.Close()
		db1.MustExec("CREATE TABLE `" + names[0] + "`.t (id INT)")
		if databaseTables(t, admin, names[1]) != 0 {
			t.Errorf("table created in %s appears in %s", names[0], names[1])
		}
	})
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("names %q, want two distinct", names)
	}
	var version string
	if err := admin.Get(&version, "SELECT VERSION()"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(version, "Vitess") {
		// vtgate keeps a dropped database's keyspace in its topology for
		// a while, and a query naming it fails ("no healthy tablet")
		// rather than finding nothing: there is no prompt way to see
		// that it is gone.
		t.Log("behind Vitess: not checking that the databases are gone")
		return
	}
	for _, name := range names {
		if databaseExists(t, admin, name) {
			t.Errorf("database %s still exists after the subtest's cleanup", name)
		}
	}
}

func databaseTables(t *testing.T, admin *sqlx.DB, name string) int {
	t.Helper()
	var n int
	if err := admin.Get(&n, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", name); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDBClosedBeforeDrop(t *testing.T) {
	var db *sqlx.DB
	t.Run("sub", func(t *testing.T) {
		db = keystoretest.DB(t)
		if got := db.Stats().MaxOpenConnections; got != 100 {
			t.Errorf("MaxOpenConnections = %d, want 100", got)
		}
		db.MustExec("CREATE TABLE t (id INT PRIMARY KEY)")
		db.MustExec("INSERT INTO t VALUES (1)")
	})
	if err := db.Ping(); err == nil {
		t.Error("DB still open after the subtest's cleanup")
	}
}

func TestNewStoreMigrates(t *testing.T) {
	store := keystoretest.NewStore(t)
	if store == nil {
		t.Fatal("NewStore returned nil")
	}
}
