package keystore_test

import (
	"context"
	"path/filepath"
	"testing"

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
	files, err := filepath.Glob("migrations/*.sql")
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
