package keystore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jmoiron/sqlx"
)

// sessionCheck confirms, once per pool, that the pool's sessions run with
// autocommit on. Statements the Store sends outside a transaction
// (VerifyKey's credit spend, Migrate's version row, plain reads) rely on
// it: with autocommit off, a spend would stay uncommitted on its pooled
// connection, holding the key's row lock, and be lost when the connection
// closes, and a read would keep a snapshot open and go on answering from
// it. autocommit comes from the DSN, the server's default or its
// init_connect, the same for every connection of a pool, so one
// connection's answer stands for all. A failed check (the server was
// unreachable) is not remembered: the next call checks again.
//
// Callers that arrive before the first check has succeeded each check for
// themselves, within their own contexts: checking twice is harmless, and no
// caller waits for another's round trip.
//
// The same statement tells whether the pool reaches a Vitess vtgate, where
// CONNECTION_ID() names one of a tablet's pooled connections, not the
// client's session: a transaction there gets no receipt (settle.go),
// since ending that thread could end another client's work.
type sessionCheck struct {
	ok     atomic.Bool
	vitess atomic.Bool
}

// sessionQuery is what verify asks; vtgate answers a SELECT without FROM
// itself, so VERSION() is its own there.
const sessionQuery = `SELECT @@SESSION.autocommit AS autocommit, VERSION() AS version`

// session is sessionQuery's answer.
type session struct {
	Autocommit int    `db:"autocommit"`
	Version    string `db:"version"`
}

// verify returns nil once db's sessions are known to autocommit, and an
// error matching ErrUnsupportedSetting when they do not.
func (c *sessionCheck) verify(ctx context.Context, db *sqlx.DB) error {
	if c.ok.Load() {
		return nil
	}
	var got session
	if err := db.GetContext(ctx, &got, sessionQuery); err != nil {
		return fmt.Errorf("keystore: check the session's settings: %w", err)
	}
	return c.learn(got)
}

// learn records what a session's answer says, returning the error for
// sessions that do not autocommit.
func (c *sessionCheck) learn(got session) error {
	if err := requireAutocommit(got.Autocommit); err != nil {
		return err
	}
	c.vitess.Store(strings.Contains(got.Version, "Vitess"))
	c.ok.Store(true)
	return nil
}

// requireAutocommit returns the error for a session whose autocommit is
// off (0), or nil.
func requireAutocommit(autocommit int) error {
	if autocommit != 0 {
		return nil
	}
	return fmt.Errorf("%w: the connection runs with autocommit=0 (from the DSN, or the server's autocommit "+
		"or init_connect), so single statements would stay uncommitted and be lost; "+
		"add autocommit=1 to the DSN", ErrUnsupportedSetting)
}
