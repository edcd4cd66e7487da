package keystore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// Behind a Vitess vtgate, the server's session counters (SHOW SESSION
// STATUS: Questions, Handler_read_*) and Prepared_stmt_count are not the
// client's: vtgate runs statements on connections of its own to the
// tablets, and answers prepared statements itself. There the tests count
// what the client sends to vtgate instead, on pools opened through
// countingConnector: the same numbers as Questions where the server counts
// what a client sent, which the tests check on MariaDB and MySQL.

var (
	vitessOnce sync.Once
	vitessErr  error
	vitessIs   bool
)

// onVitess reports whether the test server (KEYSTORE_TEST_DSN) is a Vitess
// vtgate: its VERSION() ends in "-Vitess".
func onVitess(t testing.TB) bool {
	t.Helper()
	vitessOnce.Do(func() {
		var db *sql.DB
		if db, vitessErr = sql.Open("mysql", keystoretest.AdminDSN(t)); vitessErr != nil {
			return
		}
		defer db.Close()
		var version string
		vitessErr = db.QueryRow(`SELECT VERSION()`).Scan(&version)
		vitessIs = strings.Contains(version, "Vitess")
	})
	if vitessErr != nil {
		t.Fatal(vitessErr)
	}
	return vitessIs
}

// counters of a pool opened through countingConnector.
type counters struct {
	statements atomic.Int64 // statements sent: queries, executions of prepared ones, BEGIN, COMMIT, ROLLBACK
	prepared   atomic.Int64 // prepared statements open (prepared and not yet closed)
}

// counted maps a pool opened through countingConnector to its counters.
var counted sync.Map // *sqlx.DB -> *counters

// openCounted opens a pool on dsn whose statements are counted in
// counted[db].
func openCounted(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &counters{}
	db := sqlx.NewDb(sql.OpenDB(countingConnector{inner, c}), "mysql")
	counted.Store(db, c)
	t.Cleanup(func() { counted.Delete(db) })
	return db
}

// countersOf returns db's counters; db must come from openCounted.
func countersOf(t testing.TB, db *sqlx.DB) *counters {
	t.Helper()
	c, ok := counted.Load(db)
	if !ok {
		t.Fatal("this pool's statements are not counted (not opened by openCounted)")
	}
	return c.(*counters)
}

// countingConnector wraps the MySQL driver's connector; its connections
// forward every interface of the driver's (so that database/sql uses them
// exactly as it would the driver's own) and count as they go.
type countingConnector struct {
	inner driver.Connector
	c     *counters
}

func (cc countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := cc.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{conn: conn, c: cc.c}, nil
}

func (cc countingConnector) Driver() driver.Driver { return cc.inner.Driver() }

// countingConn is one connection. The MySQL driver's connections implement
// all of these interfaces; the type assertions cannot fail.
type countingConn struct {
	conn driver.Conn
	c    *counters
}

func (cn *countingConn) Prepare(query string) (driver.Stmt, error) {
	return cn.PrepareContext(context.Background(), query)
}

func (cn *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	stmt, err := cn.conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	cn.c.prepared.Add(1)
	return &countingStmt{stmt: stmt, c: cn.c}, nil
}

func (cn *countingConn) Close() error { return cn.conn.Close() }

func (cn *countingConn) Begin() (driver.Tx, error) {
	return cn.BeginTx(context.Background(), driver.TxOptions{})
}

func (cn *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	cn.c.statements.Add(1)
	tx, err := cn.conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return countingTx{tx, cn.c}, nil
}

// ExecContext and QueryContext count a statement only when the driver sent
// one: driver.ErrSkip (interpolateParams off, arguments given) sends
// nothing, and database/sql prepares the statement instead.
func (cn *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	res, err := cn.conn.(driver.ExecerContext).ExecContext(ctx, query, args)
	if err != driver.ErrSkip {
		cn.c.statements.Add(1)
	}
	return res, err
}

func (cn *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := cn.conn.(driver.QueryerContext).QueryContext(ctx, query, args)
	if err != driver.ErrSkip {
		cn.c.statements.Add(1)
	}
	return rows, err
}

func (cn *countingConn) Ping(ctx context.Context) error { return cn.conn.(driver.Pinger).Ping(ctx) }

func (cn *countingConn) ResetSession(ctx context.Context) error {
	return cn.conn.(driver.SessionResetter).ResetSession(ctx)
}

func (cn *countingConn) IsValid() bool { return cn.conn.(driver.Validator).IsValid() }

func (cn *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	return cn.conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

type countingTx struct {
	tx driver.Tx
	c  *counters
}

func (tx countingTx) Commit() error {
	tx.c.statements.Add(1)
	return tx.tx.Commit()
}

func (tx countingTx) Rollback() error {
	tx.c.statements.Add(1)
	return tx.tx.Rollback()
}

type countingStmt struct {
	stmt   driver.Stmt
	c      *counters
	closed atomic.Bool
}

func (s *countingStmt) Close() error {
	if !s.closed.Swap(true) {
		s.c.prepared.Add(-1)
	}
	return s.stmt.Close()
}

func (s *countingStmt) NumInput() int { return s.stmt.NumInput() }

func (s *countingStmt) Exec(args []driver.Value) (driver.Result, error) {
	s.c.statements.Add(1)
	return s.stmt.Exec(args) //nolint:staticcheck // driver.Stmt requires it
}

func (s *countingStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.c.statements.Add(1)
	return s.stmt.Query(args) //nolint:staticcheck // driver.Stmt requires it
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.c.statements.Add(1)
	return s.stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.c.statements.Add(1)
	return s.stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
}

func (s *countingStmt) CheckNamedValue(nv *driver.NamedValue) error {
	return s.stmt.(driver.NamedValueChecker).CheckNamedValue(nv)
}

// TestCountedStatementsMatchServer holds the count that the tests use behind
// Vitess to the server's own where both can be seen (MariaDB, MySQL): for
// the calls of every kind of statement the Store sends (reads, prepared
// VerifyKey, transactions, a failed statement), the statements the pool
// sent are the server's session Questions, and every prepared statement is
// in the server's Prepared_stmt_count until Close.
func TestCountedStatementsMatchServer(t *testing.T) {
	if onVitess(t) {
		t.Skip("behind Vitess the server's counters are not this session's: nothing to compare with")
	}
	dsn := keystoretest.DSN(t)
	db := openCounted(t, dsn)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	s, err := keystore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := countersOf(t, db)
	ctx := context.Background()
	created, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	questions := func() int64 { return int64(serverStatus(t, db, "SESSION", "Questions")) }
	preparedOnServer := func() int64 { return int64(serverStatus(t, db, "GLOBAL", "Prepared_stmt_count")) }
	prepBefore := preparedOnServer()
	serverBefore, clientBefore := questions(), c.statements.Load()
	calls := []func() error{
		func() error {
			_, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "u",
				Permissions: []string{"a", "b"}, Ratelimits: []keystore.Ratelimit{{Name: "r", Limit: 1, Duration: time.Second}}})
			return err
		},
		func() error { _, err := s.GetKey(ctx, "ws", created.KeyID); return err },
		func() error {
			_, err := s.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: created.Key})
			return err
		},
		func() error {
			_, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: created.KeyID, Name: keystore.Set("n")})
			return err
		},
		func() error {
			if _, err := db.Exec(`NOT A STATEMENT`); err == nil {
				t.Error("NOT A STATEMENT succeeded")
			}
			return nil
		},
		func() error { return s.DeleteKey(ctx, "ws", created.KeyID) },
	}
	for i, call := range calls {
		if err := call(); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	client := c.statements.Load() - clientBefore
	server := questions() - serverBefore - 1 // the second SHOW counts itself
	t.Logf("%d statements counted by the server, %d by the pool", server, client)
	if server != client || client < int64(len(calls)) {
		t.Errorf("the server counted %d statements, the pool %d", server, client)
	}
	// The package's tests run one at a time, so the server's global count
	// of prepared statements is this pool's.
	if pool, server := c.prepared.Load(), preparedOnServer()-prepBefore; pool < 1 || pool != server {
		t.Errorf("%d prepared statements open in the pool after VerifyKey, %d more on the server; want the same, at least 1", pool, server)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if pool, server := c.prepared.Load(), preparedOnServer()-prepBefore; pool != 0 || server != 0 {
		t.Errorf("after Close: %d prepared statements open in the pool, %d more on the server; want 0", pool, server)
	}
}
