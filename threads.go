package keystore

import (
	"context"
	"fmt"
	"sync"

	"github.com/jmoiron/sqlx"
)

// The server thread behind each pooled connection, which settling a lost
// commit ends (settle.go).

// serverThreads remembers the server thread behind each pooled connection
// that a Store has written on, for every Store of the process: a thread is
// the connection's, whichever Store uses it.
var serverThreads threads

// threads maps connections to their server threads.
type threads struct {
	mu sync.Mutex
	m  map[any]Receipt // by driver connection; ID unset
}

// maxThreads bounds threads.m, which keeps its connections from being
// collected (so that a new one cannot take a dead one's address and
// entry): connections the pool closed on its own stay in it until it is
// cleared. A connection costs a few KiB until then.
const maxThreads = 1024

// driverConn returns the driver's connection behind conn.
func driverConn(conn *sqlx.Conn) (any, error) {
	var dc any
	err := conn.Raw(func(c any) error { dc = c; return nil })
	return dc, err
}

// forget drops conn, which is being closed.
func (t *threads) forget(conn *sqlx.Conn) {
	if dc, err := driverConn(conn); err == nil {
		t.mu.Lock()
		delete(t.m, dc)
		t.mu.Unlock()
	}
}

// threadQueries ask a connection for its thread, its server and the start
// of the server's run: the status is in information_schema on MariaDB and
// in performance_schema on MySQL. The first that answers is used.
var threadQueries = [...]string{
	`SELECT CONNECTION_ID() AS thread, CONCAT_WS(':', @@hostname, @@server_id, @@datadir) AS server,
		CAST(UNIX_TIMESTAMP() - VARIABLE_VALUE AS SIGNED) AS started
		FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'`,
	`SELECT CONNECTION_ID() AS thread, CONCAT_WS(':', @@hostname, @@server_id, @@datadir) AS server,
		CAST(UNIX_TIMESTAMP() - VARIABLE_VALUE AS SIGNED) AS started
		FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Uptime'`,
}

// of returns the server, thread id and server run of conn (ID unset),
// asking the server the first time; all unset when the server will not
// say. Its only errors are lost connections and ctx's end.
func (t *threads) of(ctx context.Context, conn *sqlx.Conn) (Receipt, error) {
	dc, err := driverConn(conn)
	if err != nil {
		return Receipt{}, err
	}
	t.mu.Lock()
	r, ok := t.m[dc]
	t.mu.Unlock()
	if ok {
		return r, nil
	}
	var row struct {
		Thread  uint64 `db:"thread"`
		Server  string `db:"server"`
		Started int64  `db:"started"`
	}
	for _, q := range threadQueries {
		if err = conn.GetContext(ctx, &row, q); err == nil && row.Started > 0 || isConnectionLost(err) || ctx.Err() != nil {
			break
		}
	}
	if err != nil && (isConnectionLost(err) || ctx.Err() != nil) {
		return Receipt{}, fmt.Errorf("keystore: ask the connection's thread id: %w", err)
	}
	if err == nil && row.Started > 0 { // else the server will not say: not asked again on conn
		r = Receipt{Server: row.Server, Thread: row.Thread, Started: row.Started}
	}
	t.mu.Lock()
	if t.m == nil || len(t.m) >= maxThreads {
		t.m = map[any]Receipt{}
	}
	t.m[dc] = r
	t.mu.Unlock()
	return r, nil
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}
