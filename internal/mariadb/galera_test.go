package mariadb

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"
)

func TestGalera(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	began := time.Now()
	c, err := StartGalera(ctx, 3)
	if err != nil { // ErrGaleraNotInstalled names the packages: a test that skips proves nothing
		t.Fatal(err)
	}
	t.Logf("started 3 Galera nodes in %v", time.Since(began).Round(time.Millisecond))
	defer func() {
		began := time.Now()
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
		t.Logf("stopped in %v", time.Since(began).Round(time.Millisecond))
	}()

	// Each node's reads wait until it has applied what the cluster had
	// committed when they began.
	nodes := make([]*sql.DB, len(c.Nodes))
	for i, s := range c.Nodes {
		nodes[i] = openDB(t, s.DSN("")+"&wsrep_sync_wait=1")
	}
	mustExec(t, nodes[0], "CREATE DATABASE g")
	mustExec(t, nodes[0], "CREATE TABLE g.t (id INT PRIMARY KEY AUTO_INCREMENT, k VARCHAR(20) NOT NULL UNIQUE)")
	count := func(node int, k string) int {
		t.Helper()
		var n int
		if err := nodes[node].QueryRowContext(ctx, "SELECT COUNT(*) FROM g.t WHERE k = ?", k).Scan(&n); err != nil {
			t.Fatalf("node %d: %v", node+1, err)
		}
		return n
	}

	t.Run("write on one, read on another", func(t *testing.T) {
		mustExec(t, nodes[0], "INSERT INTO g.t (k) VALUES ('a')")
		if n := count(2, "a"); n != 1 {
			t.Errorf("node 3 sees %d rows written on node 1, want 1", n)
		}
	})

	t.Run("conflict", func(t *testing.T) {
		before := conflicts(t, ctx, nodes[1])
		tx1, err := nodes[0].BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx1.Rollback()
		tx2, err := nodes[1].BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx2.Rollback()
		// Both inserts succeed locally: each node knows only its own.
		if _, err := tx1.ExecContext(ctx, "INSERT INTO g.t (k) VALUES ('c')"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx2.ExecContext(ctx, "INSERT INTO g.t (k) VALUES ('c')"); err != nil {
			t.Fatal(err)
		}
		if err := tx1.Commit(); err != nil {
			t.Fatalf("first commit: %v", err)
		}
		err = tx2.Commit()
		if n := errorNumber(err); n != 1213 {
			t.Errorf("second commit: %v, want error 1213 (deadlock)", err)
		}
		after := conflicts(t, ctx, nodes[1])
		if after <= before {
			t.Errorf("node 2's wsrep_local_cert_failures + wsrep_local_bf_aborts went from %d to %d", before, after)
		}
		if n := count(2, "c"); n != 1 {
			t.Errorf("%d rows with k = 'c', want 1", n)
		}
	})

	t.Run("kill one, two serve", func(t *testing.T) {
		c.Nodes[2].Kill()
		began := time.Now()
		mustExec(t, nodes[0], "INSERT INTO g.t (k) VALUES ('k')")
		t.Logf("first write after the kill took %v", time.Since(began).Round(time.Millisecond))
		if n := count(1, "k"); n != 1 {
			t.Errorf("node 2 sees %d rows written on node 1, want 1", n)
		}
		if err := c.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}

		began = time.Now()
		if err := c.Nodes[2].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("node 3 rejoined in %v", time.Since(began).Round(time.Millisecond))
		nodes[2] = openDB(t, c.Nodes[2].DSN("")+"&wsrep_sync_wait=1") // its port may have changed
		if err := c.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}
		if n := count(2, "k"); n != 1 {
			t.Errorf("restarted node 3 sees %d rows written while it was down, want 1", n)
		}
	})
}

// conflicts returns the node's count of transactions that lost a conflict
// with another node's: at certification, or aborted by an applier.
func conflicts(t *testing.T, ctx context.Context, db *sql.DB) int {
	t.Helper()
	rows, err := db.QueryContext(ctx, "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	sum := 0
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(value)
		sum += n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}
