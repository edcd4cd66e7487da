package keystore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jmoiron/sqlx"
)

//go:embed migrations/*.up.sql
var migrationFiles embed.FS

// errTableMissing is ER_NO_SUCH_TABLE: keystore_schema_migrations is not
// there yet (an empty database).
const errTableMissing = 1146

// Migrations returns the files that make keystore's schema, at the root of
// the returned FS, for a service that applies its schema with its own tool
// instead of calling [Store.Migrate]. They are named NNN_name.up.sql and
// annotated for goose (each runs without a transaction, since MySQL commits
// DDL at once anyway), and both goose and golang-migrate read them as they
// are. Keep keystore's versions (1, 2, ...) in a version table of their own,
// apart from the service's migrations:
//
//	p, err := goose.NewProvider(goose.DialectMySQL, db, keystore.Migrations(), goose.WithTableName("goose_keystore"))
//	_, err = p.Up(ctx)
//
//	src, err := iofs.New(keystore.Migrations(), ".")
//	m, err := migrate.NewWithSourceInstance("iofs", src, "mysql://app:secret@tcp(db:3306)/app?x-migrations-table=schema_migrations_keystore")
//	err = m.Up()
//
// golang-migrate's MySQL driver sends a file whole, in one Exec, and a file
// holds several statements: given a mysql:// URL, as above, the driver turns
// multiStatements on itself; a *sql.DB handed to its mysql.WithInstance
// must have been opened with multiStatements=true in its DSN. goose sends
// one statement at a time and needs no such option, nor does the Store.
//
// The files only go up: there are no down migrations. A tool's "down"
// drops nothing; goose and golang-migrate only rewind their own record of
// the version (and "up" then runs the files again, which changes nothing).
//
// Each file records its version in keystore_schema_migrations as its last
// statement, so after a tool has applied them all, [Store.Migrate] finds
// the schema current and returns without running DDL: a service may still
// call it at start-up as a user without DDL privileges. A new version of
// keystore may add files; apply them before that version serves traffic.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // cannot happen: the directory is embedded
	}
	return sub
}

// A migration is one file of the schema.
type migration struct {
	version int
	name    string // the file's name, e.g. 001_init.up.sql
}

// schemaMigrations returns the embedded files in version order.
func schemaMigrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.up.sql") // sorted by name: 001_, 002_, ...
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := path.Base(name)
		digits, _, _ := strings.Cut(base, "_")
		version, err := strconv.Atoi(digits)
		if err != nil {
			return nil, fmt.Errorf("keystore: migrate: bad file name %s", base)
		}
		ms = append(ms, migration{version: version, name: base})
	}
	return ms, nil
}

// Migrate creates or upgrades the schema (tables named keystore_*) in the
// database of the Store's connection, from the files of [Migrations]. It is
// idempotent, and safe to run concurrently from several processes, and
// alongside goose or golang-migrate applying the same files: every
// statement is idempotent.
//
// It first reads the versions recorded in keystore_schema_migrations
// (every file records its own, whoever ran it). When none is missing, it
// returns: no DDL, no lock, so a runtime user with only SELECT, INSERT,
// UPDATE and DELETE on the database may call it. Otherwise it takes a named
// server lock (GET_LOCK), which serialises concurrent Migrates, reads the
// versions again and runs the files still missing, in order; that needs a
// user who may CREATE tables.
//
// It returns an error matching ErrUnsupportedSetting, having done nothing,
// when the DSN names no database or its sessions run with autocommit off.
func (s *Store) Migrate(ctx context.Context) error {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	defer conn.Close()
	var got struct {
		Database *string `db:"db"`
		session
	}
	if err := conn.GetContext(ctx, &got, `SELECT DATABASE() AS db, @@SESSION.autocommit AS autocommit, VERSION() AS version`); err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	if got.Database == nil || *got.Database == "" { // NULL; vtgate answers ""
		return fmt.Errorf("keystore: migrate: %w: the DSN names no database (user@tcp(host)/dbname)", ErrUnsupportedSetting)
	}
	if err := s.session.learn(got.session); err != nil { // the Store need not ask again
		return fmt.Errorf("keystore: migrate: %w", err)
	}

	all, err := schemaMigrations()
	if err != nil {
		return err
	}
	pending, err := pendingMigrations(ctx, conn, all)
	if err != nil || len(pending) == 0 {
		return err
	}

	var locked *int
	if err := conn.GetContext(ctx, &locked, `SELECT GET_LOCK(CONCAT(DATABASE(), '.keystore_migrate'), 60)`); err != nil {
		return fmt.Errorf("keystore: migrate: lock: %w", err)
	}
	if locked == nil || *locked != 1 {
		return fmt.Errorf("keystore: migrate: another process held the migration lock for 60s")
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.keystore_migrate'))`)
	// Another process may have applied some while this one waited.
	if pending, err = pendingMigrations(ctx, conn, all); err != nil {
		return err
	}
	for _, m := range pending {
		body, err := fs.ReadFile(migrationFiles, "migrations/"+m.name)
		if err != nil {
			return err
		}
		// The file's last statement records its version.
		for _, stmt := range splitStatements(string(body)) {
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("keystore: migrate %s: %w", m.name, err)
			}
		}
	}
	return nil
}

// pendingMigrations returns those of all whose versions
// keystore_schema_migrations lacks: all of them when the table is missing.
func pendingMigrations(ctx context.Context, conn *sqlx.Conn, all []migration) ([]migration, error) {
	var applied []int
	err := conn.SelectContext(ctx, &applied, `SELECT version FROM keystore_schema_migrations`)
	if n, ok := serverErrorNumber(err); ok && n == errTableMissing {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: migrate: %w", err)
	}
	return slices.DeleteFunc(slices.Clone(all), func(m migration) bool {
		return slices.Contains(applied, m.version)
	}), nil
}

// splitStatements splits a migration file on lines holding only ";" and
// drops "--" comment lines (goose's annotations among them).
func splitStatements(body string) []string {
	var stmts []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			stmts = append(stmts, s)
		}
		cur.Reset()
	}
	for line := range strings.Lines(body) {
		switch t := strings.TrimSpace(line); {
		case t == ";":
			flush()
		case strings.HasPrefix(t, "--"):
		default:
			cur.WriteString(line)
		}
	}
	flush()
	return stmts
}
