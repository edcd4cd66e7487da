package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/jmoiron/sqlx"
)

// preparedStatements holds server-side prepared statements, one per pool
// and query, prepared on first use. database/sql prepares each on every
// connection that runs it, once, and a prepared statement then runs in one
// round trip without being parsed again, which makes VerifyKey's lookup
// cheaper than the same query sent as text (interpolateParams; see
// docs/benchmarks.md). It is safe for concurrent use.
//
// Only statements run outside a transaction use it: the first prepare of a
// query takes a connection of its own from the pool, which a transaction
// holding the pool's last connection would wait for forever. (CreateKey's
// INSERTs, tried as prepared statements, saved some server CPU and no wall
// time; they would have to be prepared before the transaction.)
type preparedStatements struct {
	mu    sync.Mutex
	stmts map[preparedKey]*sql.Stmt
}

type preparedKey struct {
	db    *sqlx.DB
	query string
}

// close closes every statement; the next get prepares anew.
func (p *preparedStatements) close() error {
	p.mu.Lock()
	stmts := p.stmts
	p.stmts = nil
	p.mu.Unlock()
	var errs []error
	for _, stmt := range stmts {
		errs = append(errs, stmt.Close())
	}
	return errors.Join(errs...)
}

// get returns query prepared on db. A failed prepare is not remembered: the
// next call tries again.
func (p *preparedStatements) get(ctx context.Context, db *sqlx.DB, query string) (*sql.Stmt, error) {
	key := preparedKey{db, query}
	p.mu.Lock()
	stmt := p.stmts[key]
	p.mu.Unlock()
	if stmt != nil {
		return stmt, nil
	}
	stmt, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("keystore: prepare: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prior := p.stmts[key]; prior != nil { // a racing call prepared it first
		stmt.Close()
		return prior, nil
	}
	if p.stmts == nil {
		p.stmts = make(map[preparedKey]*sql.Stmt)
	}
	p.stmts[key] = stmt
	return stmt, nil
}
