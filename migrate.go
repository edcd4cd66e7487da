package keystore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate creates or upgrades the schema (tables named keystore_*) in the
// database of the Store's connection. It is idempotent, and safe to run
// concurrently from several processes: a named server lock (GET_LOCK)
// serialises them, and every statement is idempotent anyway.
//
// It returns an error matching ErrUnsupportedSetting, having done nothing,
// when the DSN names no database or its sessions run with autocommit off.
func (s *Store) Migrate(ctx context.Context) error {
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	defer conn.Close()
	var session struct {
		Database   *string `db:"db"`
		Autocommit int     `db:"autocommit"`
	}
	if err := conn.GetContext(ctx, &session, `SELECT DATABASE() AS db, @@SESSION.autocommit AS autocommit`); err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	if session.Database == nil {
		return fmt.Errorf("keystore: migrate: %w: the DSN names no database (user@tcp(host)/dbname)", ErrUnsupportedSetting)
	}
	if err := requireAutocommit(session.Autocommit); err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	s.session.ok.Store(true) // the pool's sessions autocommit: the Store need not ask again
	var locked *int
	if err := conn.GetContext(ctx, &locked, `SELECT GET_LOCK(CONCAT(DATABASE(), '.keystore_migrate'), 60)`); err != nil {
		return fmt.Errorf("keystore: migrate: lock: %w", err)
	}
	if locked == nil || *locked != 1 {
		return fmt.Errorf("keystore: migrate: another process held the migration lock for 60s")
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.keystore_migrate'))`)

	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS keystore_schema_migrations (
		version INT NOT NULL PRIMARY KEY, applied_at DATETIME(6) NOT NULL) ENGINE=InnoDB`); err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	var applied []int
	if err := conn.SelectContext(ctx, &applied, `SELECT version FROM keystore_schema_migrations`); err != nil {
		return fmt.Errorf("keystore: migrate: %w", err)
	}
	files, err := fs.Glob(migrations, "migrations/*.sql") // sorted by name: 001_, 002_, ...
	if err != nil {
		return err
	}
	for _, name := range files {
		base := strings.TrimPrefix(name, "migrations/")
		version, err := strconv.Atoi(base[:strings.IndexByte(base, '_')])
		if err != nil {
			return fmt.Errorf("keystore: migrate: bad file name %s", name)
		}
		if slices.Contains(applied, version) {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		for _, stmt := range splitStatements(string(body)) {
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("keystore: migrate %s: %w", base, err)
			}
		}
		if _, err := conn.ExecContext(ctx, `INSERT IGNORE INTO keystore_schema_migrations (version, applied_at)
			VALUES (?, ?)`, version, utc(s.clock())); err != nil {
			return fmt.Errorf("keystore: migrate %s: %w", base, err)
		}
	}
	return nil
}

// splitStatements splits a migration file on lines holding only ";" and
// drops "--" comment lines.
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
