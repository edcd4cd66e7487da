// Package demodb opens the database an example program runs on.
package demodb

import (
	"context"
	"fmt"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"
)

// Open opens a pool on dsn's database with parseTime and interpolateParams
// on (one round trip per statement, as keystore.New advises), creating the
// database fallback and using it when dsn names none. It returns the
// configuration it used, for printing.
func Open(ctx context.Context, dsn, fallback string) (*sqlx.DB, *mysql.Config, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("DSN: %w", err)
	}
	cfg.ParseTime = true
	cfg.InterpolateParams = true
	if cfg.DBName == "" {
		admin, err := sqlx.Open("mysql", cfg.FormatDSN())
		if err != nil {
			return nil, nil, err
		}
		_, err = admin.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS `"+fallback+"`")
		admin.Close()
		if err != nil {
			return nil, nil, err
		}
		cfg.DBName = fallback
	}
	db, err := sqlx.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return nil, nil, err
	}
	return db, cfg, nil
}
