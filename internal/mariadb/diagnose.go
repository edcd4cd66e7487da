package mariadb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"time"
)

// Diagnose returns what the server is doing, as text for a test log: its
// running statements, open InnoDB transactions and lock waits, the wsrep
// state on a Galera node, and the end of its error log. Each query is
// bounded by a few seconds; one that fails shows its error instead.
func (s *Server) Diagnose(ctx context.Context) string {
	var b strings.Builder
	fmt.Fprintf(&b, "==== server %s (pid %d)\n", s.Addr(), s.Pid())
	db := s.rootDB()
	defer db.Close()
	for _, q := range []string{
		`SELECT id, user, db, command, time, state, LEFT(info, 200) AS info FROM information_schema.PROCESSLIST
			WHERE command <> 'Sleep' AND id <> CONNECTION_ID() ORDER BY time DESC`,
		`SELECT trx_id, trx_state, trx_started, trx_wait_started, trx_mysql_thread_id, trx_rows_locked,
			trx_rows_modified, trx_isolation_level, LEFT(trx_query, 200) AS trx_query
			FROM information_schema.INNODB_TRX ORDER BY trx_started`,
		`SELECT * FROM information_schema.INNODB_LOCK_WAITS`,
		`SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_cluster_status',
			'wsrep_cluster_size', 'wsrep_ready', 'wsrep_flow_control_paused', 'wsrep_local_recv_queue',
			'wsrep_local_send_queue', 'wsrep_local_bf_aborts', 'wsrep_local_cert_failures', 'wsrep_last_committed')`,
	} {
		fmt.Fprintf(&b, "--- %s\n", strings.Join(strings.Fields(q), " "))
		writeRows(ctx, &b, db, q)
	}
	if log, err := os.ReadFile(s.errLog); err == nil {
		fmt.Fprintf(&b, "--- end of %s\n%s\n", s.errLog, tail(log, 40))
	}
	return b.String()
}

// Diagnose returns [Server.Diagnose] of every node.
func (c *Cluster) Diagnose(ctx context.Context) string {
	var b strings.Builder
	for _, n := range c.Nodes {
		b.WriteString(n.Diagnose(ctx))
	}
	return b.String()
}

// writeRows writes the rows of query q to b, one line each.
func writeRows(ctx context.Context, b *strings.Builder, db *sql.DB, q string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		fmt.Fprintf(b, "error: %v\n", err)
		return
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			fmt.Fprintf(b, "error: %v\n", err)
			return
		}
		for i, v := range vals {
			fmt.Fprintf(b, "%s=%s ", cols[i], v.String)
		}
		b.WriteString("\n")
	}
	if err := rows.Err(); err != nil {
		fmt.Fprintf(b, "error: %v\n", err)
	}
}
