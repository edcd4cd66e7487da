// Package migratetest proves that keystore's schema, as keystore.Migrations
// exports it, is applied by goose and by golang-migrate to an empty
// database, that the result is the schema Store.Migrate makes, that Migrate
// afterwards runs nothing, and that the runtime privileges docs/migrations.md
// names are enough for a Store's whole workload (and that each of them is
// needed).
//
// It is a separate module so that goose and golang-migrate never enter the
// library's dependency graph (TestToolsStayOutOfTheLibrarysGraph checks).
// Run it with
//
//	cd internal/migratetest && go test -race ./...
//
// (make test does). It starts its own throwaway MariaDB server, or uses
// KEYSTORE_TEST_DSN, whose user must be allowed to CREATE USER and GRANT.
package migratetest
