package migratetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func TestMain(m *testing.M) { keystoretest.Main(m) }

// runtimePrivileges are what docs/migrations.md says a Store's user needs
// on its database once the schema exists.
var runtimePrivileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE"}

// migratePrivileges are what it says Store.Migrate needs to create the
// schema of today's files.
var migratePrivileges = []string{"CREATE", "SELECT", "INSERT"}

// goosePrivileges and golangMigratePrivileges are what docs/migrations.md
// says each tool's user needs to apply the files and keep its own version
// table (golang-migrate rewrites its one row with DELETE and INSERT).
var (
	goosePrivileges         = []string{"CREATE", "SELECT", "INSERT"}
	golangMigratePrivileges = []string{"CREATE", "SELECT", "INSERT", "DELETE"}
)

// open opens a pool on dsn, closed when t ends.
func open(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// withParams returns dsn with params added.
func withParams(t testing.TB, dsn string, params map[string]string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	for k, v := range params {
		cfg.Params[k] = v
	}
	return cfg.FormatDSN()
}

// userFor creates a user of its own, granted privileges on the database of
// dsn and nothing else, and returns dsn with that user's name and password.
// The user is dropped when t ends.
func userFor(t testing.TB, dsn string, privileges ...string) string {
	t.Helper()
	return userOn(t, dsn, nil, privileges...)
}

// userOn is userFor with the privileges granted on each of tables (of the
// database of dsn) instead of the whole database, when tables is not nil.
func userOn(t testing.TB, dsn string, tables []string, privileges ...string) string {
	t.Helper()
	ctx := context.Background()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	objects := []string{"`" + cfg.DBName + "`.*"}
	if tables != nil {
		objects = nil
		for _, table := range tables {
			objects = append(objects, "`"+cfg.DBName+"`.`"+table+"`")
		}
	}
	admin := open(t, keystoretest.AdminDSN(t))
	// The host this client is known by, so that the user is matched before
	// any anonymous user of that host.
	var host string
	if err := admin.GetContext(ctx, &host, `SELECT SUBSTRING_INDEX(USER(), '@', -1)`); err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	rand.Read(b[:])
	name, password := "ks_"+hex.EncodeToString(b[:]), hex.EncodeToString(b[:])+"Pw!"
	account := fmt.Sprintf("'%s'@'%s'", name, host)
	admin.MustExecContext(ctx, "CREATE USER "+account+" IDENTIFIED BY '"+password+"'")
	t.Cleanup(func() { admin.ExecContext(context.Background(), "DROP USER "+account) })
	if len(privileges) > 0 {
		for _, object := range objects {
			admin.MustExecContext(ctx, "GRANT "+strings.Join(privileges, ", ")+" ON "+object+" TO "+account)
		}
	}
	// The user has exactly these, and nothing global.
	var grants []string
	if err := admin.SelectContext(ctx, &grants, "SHOW GRANTS FOR "+account); err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(privileges))
	seen := 0
	for _, g := range grants {
		if strings.HasPrefix(g, "GRANT USAGE ON *.* TO ") {
			continue
		}
		granted, ok := strings.CutPrefix(g, "GRANT ")
		granted, rest, _ := strings.Cut(granted, " ON ")
		object, _, _ := strings.Cut(rest, " TO ")
		got := strings.Split(granted, ", ")
		slices.Sort(got)
		if !ok || !slices.Contains(objects, object) || !slices.Equal(got, want) {
			t.Fatalf("grant %q, want %v on %v", g, want, objects)
		}
		seen++
	}
	if len(privileges) > 0 && seen != len(objects) {
		t.Fatalf("grants %q, want %v on each of %v", grants, want, objects)
	}
	cfg.User, cfg.Passwd = name, password
	return cfg.FormatDSN()
}

// without returns privileges less p.
func without(privileges []string, p string) []string {
	return slices.DeleteFunc(slices.Clone(privileges), func(q string) bool { return q == p })
}

// isDenied reports whether err is the server refusing a statement for want
// of a privilege on a table or column.
func isDenied(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1142 || me.Number == 1143)
}

// migratedByStore returns the DSN of a fresh database that Store.Migrate
// has migrated: the reference the tools' schemas are compared with.
func migratedByStore(t testing.TB) string {
	t.Helper()
	dsn := keystoretest.DSN(t)
	s, err := keystore.New(open(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dsn
}

// schema is what information_schema, SHOW CREATE TABLE and the rows the
// migrations insert say of a database's keystore_* tables. Tools' own
// version tables are named otherwise, and left out.
type schema struct {
	Tables, Columns, Indexes []string
	Creates                  []string
	Shards                   []string // keystore_change_shards
	Versions                 []string // keystore_schema_migrations, without applied_at
}

const keystoreTables = `TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'keystore\_%'`

func schemaOf(t testing.TB, db *sqlx.DB) schema {
	t.Helper()
	var s schema
	s.Tables = rows(t, db, `SELECT TABLE_NAME, TABLE_TYPE, ENGINE, ROW_FORMAT, TABLE_COLLATION, CREATE_OPTIONS, TABLE_COMMENT
		FROM information_schema.TABLES WHERE `+keystoreTables+` ORDER BY TABLE_NAME`)
	s.Columns = rows(t, db, `SELECT TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT,
		CHARACTER_SET_NAME, COLLATION_NAME, COLUMN_KEY, EXTRA, COLUMN_COMMENT
		FROM information_schema.COLUMNS WHERE `+keystoreTables+` ORDER BY TABLE_NAME, ORDINAL_POSITION`)
	s.Indexes = rows(t, db, `SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, COLLATION, SUB_PART,
		NULLABLE, INDEX_TYPE FROM information_schema.STATISTICS WHERE `+keystoreTables+`
		ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX`)
	for _, table := range rows(t, db, `SELECT TABLE_NAME FROM information_schema.TABLES WHERE `+keystoreTables+` ORDER BY TABLE_NAME`) {
		var create struct {
			Table  string `db:"Table"`
			Create string `db:"Create Table"`
		}
		if err := db.Get(&create, "SHOW CREATE TABLE `"+table+"`"); err != nil {
			t.Fatal(err)
		}
		s.Creates = append(s.Creates, create.Create)
	}
	s.Shards = rows(t, db, `SELECT shard, seq FROM keystore_change_shards ORDER BY shard`)
	s.Versions = rows(t, db, `SELECT version FROM keystore_schema_migrations ORDER BY version`)
	return s
}

// sameSchema fails t unless got is want, which must be a whole schema.
func sameSchema(t testing.TB, got, want schema) {
	t.Helper()
	if len(want.Tables) != 14 || len(want.Columns) < 50 || len(want.Indexes) < 20 || len(want.Shards) != 32 || len(want.Versions) != 5 {
		t.Fatalf("the reference schema is not whole: %d tables, %d columns, %d index columns, %d shards, versions %v",
			len(want.Tables), len(want.Columns), len(want.Indexes), len(want.Shards), want.Versions)
	}
	for _, part := range []struct {
		name      string
		got, want []string
	}{
		{"tables", got.Tables, want.Tables},
		{"columns", got.Columns, want.Columns},
		{"indexes", got.Indexes, want.Indexes},
		{"SHOW CREATE TABLE", got.Creates, want.Creates},
		{"change shards", got.Shards, want.Shards},
		{"versions", got.Versions, want.Versions},
	} {
		if !slices.Equal(part.got, part.want) {
			t.Errorf("%s differ from Migrate's:\ngot  %q\nwant %q", part.name, part.got, part.want)
		}
	}
}

// rows returns the rows of query, each as its columns joined by "|".
func rows(t testing.TB, db *sqlx.DB, query string) []string {
	t.Helper()
	r, err := db.Queryx(query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer r.Close()
	var out []string
	for r.Next() {
		cols, err := r.SliceScan()
		if err != nil {
			t.Fatal(err)
		}
		fields := make([]string, len(cols))
		for i, c := range cols {
			switch c := c.(type) {
			case nil:
				fields[i] = "NULL"
			case []byte:
				fields[i] = string(c)
			default:
				fields[i] = fmt.Sprint(c)
			}
		}
		out = append(out, strings.Join(fields, "|"))
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// versionRows returns keystore_schema_migrations whole, applied_at included.
func versionRows(t testing.TB, db *sqlx.DB) []string {
	t.Helper()
	return rows(t, db, `SELECT version, DATE_FORMAT(applied_at, '%Y-%m-%d %H:%i:%s.%f') FROM keystore_schema_migrations ORDER BY version`)
}

// migrateIsANoOp runs Store.Migrate on the schema a tool made at dsn, as a
// user with only the runtime privileges (no CREATE, no ALTER), and fails t
// unless it succeeds and changes nothing: the versions keep their
// applied_at, and the schema is still want.
func migrateIsANoOp(t testing.TB, dsn string, want schema) {
	t.Helper()
	db := open(t, dsn)
	before := versionRows(t, db)
	runtime := open(t, userFor(t, dsn, runtimePrivileges...))
	s, err := keystore.New(runtime)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Migrate(context.Background()); err != nil {
			t.Fatalf("Migrate as a user without DDL privileges, after the tool: %v", err)
		}
	}
	if after := versionRows(t, db); !slices.Equal(after, before) {
		t.Errorf("Migrate changed keystore_schema_migrations:\nbefore %q\nafter  %q", before, after)
	}
	sameSchema(t, schemaOf(t, db), want)
}
