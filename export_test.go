package keystore

import "context"

// WithoutReturning makes s behave as on a server without INSERT ...
// RETURNING (MySQL), so that tests on MariaDB cover that path too.
func WithoutReturning(s *Store) { s.noReturning.Store(true) }

// WithoutOneTrip makes s behave as on a server without anonymous compound
// statements (MySQL): every transaction goes statement by statement.
func WithoutOneTrip(s *Store) { s.noOneTrip.Store(true) }

// ExecOneTrip runs queries (no arguments) as one transaction in one round
// trip, as CreateKey does, with read (if not "") last before the COMMIT,
// and returns what read read.
func ExecOneTrip(ctx context.Context, s *Store, read string, queries ...string) (string, error) {
	stmts := make([]statement, len(queries))
	for i, q := range queries {
		stmts[i] = statement{query: q}
	}
	return s.execOneTrip(ctx, statement{query: read}, stmts...)
}

// ErrNoOneTrip is what ExecOneTrip returns on a server without anonymous
// compound statements.
var ErrNoOneTrip = errNoOneTrip

// RequireRowWritten is the block statement that ends a block when the
// statement before it changed no row, and IsNoRowWritten recognises its
// error.
var (
	RequireRowWritten = requireRowWritten.query
	IsNoRowWritten    = isNoRowWritten
)

// FeedStatements returns the statements (queries and their arguments)
// with which a transaction that changed the key keyID writes the change
// feed, last before its COMMIT.
func FeedStatements(keyID string) (queries []string, args [][]any) {
	for _, st := range changeStatements([]string{keyRef(keyID)}) {
		queries, args = append(queries, st.query), append(args, st.args)
	}
	return queries, args
}

// FeedShards is the number of shards of the change feed.
const FeedShards = feedShards
