package migratetest

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/golang-migrate/migrate/v4"
	migratemysql "github.com/golang-migrate/migrate/v4/database/mysql"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/pressly/goose/v3"
)

// A service's own migrations, applied before keystore's with the tool's
// default version table: keystore's go into a table of their own.
var (
	serviceGoose = fstest.MapFS{
		"00001_things.sql": {Data: []byte("-- +goose Up\nCREATE TABLE service_things (id INT NOT NULL PRIMARY KEY);\n")},
	}
	serviceMigrate = fstest.MapFS{
		"20240101000000_things.up.sql": {Data: []byte("CREATE TABLE service_things (id INT NOT NULL PRIMARY KEY);\n")},
	}
)

// goose's Provider applies Migrations() to an empty database (which holds
// a service's own goose migrations): the schema is Migrate's, and Migrate
// afterwards, as the runtime user, does nothing.
func TestGooseProvider(t *testing.T) {
	t.Parallel()
	want := schemaOf(t, open(t, migratedByStore(t)))
	dsn := keystoretest.DSN(t)
	db := open(t, dsn)
	tool := open(t, userFor(t, dsn, goosePrivileges...))
	ctx := context.Background()

	service, err := goose.NewProvider(goose.DialectMySQL, tool.DB, serviceGoose)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := service.Up(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectMySQL, tool.DB, keystore.Migrations(), goose.WithTableName("goose_keystore"))
	if err != nil {
		t.Fatal(err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(want.Versions) {
		t.Fatalf("goose applied %d files, want %d", len(results), len(want.Versions))
	}
	if v, err := p.GetDBVersion(ctx); err != nil || v != int64(len(want.Versions)) {
		t.Fatalf("goose's version %d, %v; want %d", v, err, len(want.Versions))
	}
	if v, err := service.GetDBVersion(ctx); err != nil || v != 1 {
		t.Fatalf("the service's goose version %d, %v; want 1", v, err)
	}
	sameSchema(t, schemaOf(t, db), want)
	migrateIsANoOp(t, dsn, want)
	// And goose, in turn, has nothing left to do after Migrate.
	if results, err := p.Up(ctx); err != nil || len(results) != 0 {
		t.Fatalf("goose up again: %d applied, %v", len(results), err)
	}
}

// goose's package-level API (goose.SetBaseFS and goose.Up) does the same.
// Not parallel: that API's settings are global.
func TestGooseGlobalAPI(t *testing.T) {
	want := schemaOf(t, open(t, migratedByStore(t)))
	dsn := keystoretest.DSN(t)
	db := open(t, dsn)
	tool := open(t, userFor(t, dsn, goosePrivileges...))
	ctx := context.Background()

	goose.SetBaseFS(keystore.Migrations())
	goose.SetTableName("goose_keystore")
	t.Cleanup(func() { goose.SetBaseFS(nil); goose.SetTableName("goose_db_version") })
	if err := goose.SetDialect("mysql"); err != nil {
		t.Fatal(err)
	}
	if err := goose.UpContext(ctx, tool.DB, "."); err != nil {
		t.Fatal(err)
	}
	if v, err := goose.GetDBVersionContext(ctx, tool.DB); err != nil || v != int64(len(want.Versions)) {
		t.Fatalf("goose's version %d, %v; want %d", v, err, len(want.Versions))
	}
	sameSchema(t, schemaOf(t, db), want)
	migrateIsANoOp(t, dsn, want)
}

// golang-migrate, given a mysql:// URL, applies Migrations() to an empty
// database (which holds a service's own migrations): its driver turns
// multiStatements on by itself. The schema is Migrate's, and Migrate
// afterwards, as the runtime user, does nothing.
func TestGolangMigrateURL(t *testing.T) {
	t.Parallel()
	want := schemaOf(t, open(t, migratedByStore(t)))
	dsn := keystoretest.DSN(t)
	toolDSN := userFor(t, dsn, golangMigratePrivileges...)

	serviceSrc, err := iofs.New(serviceMigrate, ".")
	if err != nil {
		t.Fatal(err)
	}
	service, err := migrate.NewWithSourceInstance("iofs", serviceSrc, "mysql://"+toolDSN)
	if err != nil {
		t.Fatal(err)
	}
	if err := service.Up(); err != nil {
		t.Fatal(err)
	}
	closeMigrate(t, service)

	src, err := iofs.New(keystore.Migrations(), ".")
	if err != nil {
		t.Fatal(err)
	}
	m, err := migrate.NewWithSourceInstance("iofs", src,
		"mysql://"+withParams(t, toolDSN, map[string]string{"x-migrations-table": "schema_migrations_keystore"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(); err != nil {
		t.Fatal(err)
	}
	if v, dirty, err := m.Version(); err != nil || dirty || v != uint(len(want.Versions)) {
		t.Fatalf("golang-migrate's version %d (dirty %v), %v; want %d", v, dirty, err, len(want.Versions))
	}
	closeMigrate(t, m)
	db := open(t, dsn)
	if n := rows(t, db, `SELECT version FROM schema_migrations`); len(n) != 1 || n[0] != "20240101000000" {
		t.Fatalf("the service's golang-migrate version: %q", n)
	}
	sameSchema(t, schemaOf(t, db), want)
	migrateIsANoOp(t, dsn, want)
}

// golang-migrate given a *sql.DB (mysql.WithInstance) needs that pool
// opened with multiStatements=true: without it the first file, several
// statements in one Exec, is a syntax error and nothing of it runs.
func TestGolangMigrateWithInstance(t *testing.T) {
	t.Parallel()
	want := schemaOf(t, open(t, migratedByStore(t)))

	up := func(t *testing.T, dsn string) error {
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			t.Fatal(err)
		}
		driver, err := migratemysql.WithInstance(db, &migratemysql.Config{MigrationsTable: "schema_migrations_keystore"})
		if err != nil {
			t.Fatal(err)
		}
		src, err := iofs.New(keystore.Migrations(), ".")
		if err != nil {
			t.Fatal(err)
		}
		m, err := migrate.NewWithInstance("iofs", src, "mysql", driver)
		if err != nil {
			t.Fatal(err)
		}
		defer closeMigrate(t, m) // closes db
		return m.Up()
	}

	t.Run("multiStatements", func(t *testing.T) {
		dsn := keystoretest.DSN(t)
		toolDSN := userFor(t, dsn, golangMigratePrivileges...)
		if err := up(t, withParams(t, toolDSN, map[string]string{"multiStatements": "true"})); err != nil {
			t.Fatal(err)
		}
		sameSchema(t, schemaOf(t, open(t, dsn)), want)
		migrateIsANoOp(t, dsn, want)
	})
	t.Run("without", func(t *testing.T) {
		dsn := keystoretest.DSN(t)
		err := up(t, userFor(t, dsn, golangMigratePrivileges...))
		if err == nil || !strings.Contains(err.Error(), "Error 1064") {
			t.Fatalf("golang-migrate without multiStatements: %v; want a syntax error (1064)", err)
		}
		if tables := rows(t, open(t, dsn), `SELECT TABLE_NAME FROM information_schema.TABLES WHERE `+keystoreTables); len(tables) != 0 {
			t.Fatalf("tables after the failed file: %q", tables)
		}
	})
}

func closeMigrate(t testing.TB, m *migrate.Migrate) {
	t.Helper()
	if srcErr, dbErr := m.Close(); srcErr != nil || dbErr != nil {
		t.Fatal(errors.Join(srcErr, dbErr))
	}
}
