package keystore_test

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// Several processes migrating one empty database at once all succeed and
// leave one schema.
func TestMigrateConcurrentlyAndRepeatedly(t *testing.T) {
	dsn := keystoretest.DSN(t)
	const processes = 8
	errs := parallel(processes, func(int) error {
		db, err := sqlx.Open("mysql", dsn) // a pool of its own, like another process
		if err != nil {
			return err
		}
		defer db.Close()
		s, err := keystore.New(db)
		if err != nil {
			return err
		}
		for range 2 {
			if err := s.Migrate(context.Background()); err != nil {
				return err
			}
		}
		return nil
	})
	failOnErrors(t, errs)
	db := sqlx.MustOpen("mysql", dsn)
	defer db.Close()
	files, err := fs.Glob(keystore.Migrations(), "*.up.sql")
	if err != nil || len(files) < 2 {
		t.Fatalf("migration files: %v, %v", files, err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_schema_migrations`); n != len(files) {
		t.Fatalf("%d migrations recorded, want %d", n, len(files))
	}
	if n := count(t, db, `SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'keystore%'`); n != len(allTables)+1 {
		t.Fatalf("%d keystore tables, want %d", n, len(allTables)+1)
	}
}

// Migrate on a schema some versions behind runs only the missing files, and
// leaves the versions already there as they were.
func TestMigrateRunsOnlyMissingVersions(t *testing.T) {
	_, db := newStore(t)
	ctx := context.Background()
	files, err := fs.Glob(keystore.Migrations(), "*.up.sql")
	if err != nil || len(files) < 3 {
		t.Fatalf("migration files: %v, %v", files, err)
	}
	// Back to version 3, as if 004 and 005 had never run.
	for _, stmt := range []string{
		`DROP TABLE keystore_receipts`, `DROP TABLE keystore_change_shards`, `DROP TABLE keystore_changes`,
		`DELETE FROM keystore_schema_migrations WHERE version > 3`,
		`UPDATE keystore_schema_migrations SET applied_at = '2001-02-03 04:05:06.000007'`,
	} {
		db.MustExecContext(ctx, stmt)
	}
	s, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Version   int       `db:"version"`
		AppliedAt time.Time `db:"applied_at"`
	}
	if err := db.SelectContext(ctx, &rows, `SELECT version, applied_at FROM keystore_schema_migrations ORDER BY version`); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(files) {
		t.Fatalf("%d versions recorded, want %d", len(rows), len(files))
	}
	old := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	for i, r := range rows {
		if r.Version != i+1 {
			t.Fatalf("versions %v, want 1..%d", rows, len(files))
		}
		if reran := !r.AppliedAt.Equal(old); reran != (r.Version > 3) {
			t.Errorf("version %d applied at %v: ran again %v, want %v", r.Version, r.AppliedAt, reran, r.Version > 3)
		}
	}
	if n := count(t, db, `SELECT COUNT(*) FROM keystore_change_shards`); n != 32 {
		t.Errorf("%d change shards, want 32", n)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'keystore%'`); n != len(allTables)+1 {
		t.Fatalf("%d keystore tables, want %d", n, len(allTables)+1)
	}
}

// Every migration file keeps to what Migrate, goose and golang-migrate all
// read (internal/migratetest applies them with the tools), and records its
// own version as its last statement, so that Migrate after a tool finds
// them all applied.
func TestMigrationFilesRecordTheirVersions(t *testing.T) {
	fsys := keystore.Migrations()
	names, err := fs.Glob(fsys, "*")
	if err != nil || len(names) < 5 {
		t.Fatalf("migration files: %v, %v", names, err)
	}
	named := regexp.MustCompile(`^([0-9]{3})_[a-z0-9_]+\.up\.sql$`)
	for i, name := range names {
		m := named.FindStringSubmatch(name)
		if m == nil {
			t.Errorf("%s: not named NNN_name.up.sql", name)
			continue
		}
		version, _ := strconv.Atoi(m[1])
		if version != i+1 {
			t.Errorf("%s: version %d, want %d (versions run 1, 2, ... without gaps)", name, version, i+1)
		}
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(string(body), "\n"), "\n")
		if len(lines) < 3 || lines[0] != "-- +goose Up" || lines[1] != "-- +goose NO TRANSACTION" {
			t.Errorf("%s: does not begin with the goose annotations", name)
		}
		if lines[len(lines)-1] != ";" {
			t.Errorf("%s: its last line is %q, not \";\" (goose needs every statement ended)", name, lines[len(lines)-1])
		}
		var stmts []string
		var cur []string
		for n, line := range lines {
			trimmed := strings.TrimSpace(line)
			code, _, _ := strings.Cut(trimmed, "-- ")
			switch {
			case n > 1 && strings.Contains(line, "+goose"):
				err = fmt.Errorf("line %d: a goose annotation after the first two lines", n+1)
			case trimmed == ";":
				stmts, cur = append(stmts, strings.Join(cur, "\n")), nil
			case strings.HasPrefix(trimmed, "--") || trimmed == "":
			case strings.HasSuffix(strings.TrimSpace(code), ";"):
				// goose would end a statement here, and Migrate would not.
				err = fmt.Errorf("line %d ends in \";\": end statements with a line holding only \";\"", n+1)
			default:
				cur = append(cur, trimmed)
			}
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		want := fmt.Sprintf("INSERT IGNORE INTO keystore_schema_migrations (version, applied_at) VALUES (%d, UTC_TIMESTAMP(6))", version)
		if len(stmts) == 0 || stmts[len(stmts)-1] != want {
			t.Errorf("%s: the last statement is not\n\t%s", name, want)
		}
		if version == 1 && (len(stmts) == 0 || !strings.HasPrefix(stmts[0], "CREATE TABLE IF NOT EXISTS keystore_schema_migrations (")) {
			t.Errorf("%s: the first statement does not create keystore_schema_migrations", name)
		}
	}
}
