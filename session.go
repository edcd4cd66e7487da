package keystore

import (
	"context"
	"fmt"
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
type sessionCheck struct {
	ok atomic.Bool
}

// verify returns nil once db's sessions are known to autocommit, and an
// error matching ErrUnsupportedSetting when they do not.
func (c *sessionCheck) verify(ctx context.Context, db *sqlx.DB) error {
	if c.ok.Load() {
		return nil
	}
	var autocommit int
	if err := db.GetContext(ctx, &autocommit, `SELECT @@SESSION.autocommit`); err != nil {
		return fmt.Errorf("keystore: check the session's settings: %w", err)
	}
	if err := requireAutocommit(autocommit); err != nil {
		return err
	}
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
