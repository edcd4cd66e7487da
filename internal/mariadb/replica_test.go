package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestReplicated(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	began := time.Now()
	r, err := StartReplicated(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started primary %s and replica %s in %v", r.Primary.Addr(), r.Replica.Addr(), time.Since(began).Round(time.Millisecond))
	stopped := false
	defer func() {
		if !stopped {
			r.Stop()
		}
	}()

	primary := openDB(t, r.Primary.DSN(""))
	mustExec(t, primary, "CREATE DATABASE app")
	mustExec(t, primary, "CREATE TABLE app.t (id INT PRIMARY KEY)")
	reader := openDB(t, r.ReaderDSN("app"))
	rows := func(id int) int {
		t.Helper()
		var n int
		if err := reader.QueryRowContext(ctx, "SELECT COUNT(*) FROM t WHERE id = ?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("replicates", func(t *testing.T) {
		mustExec(t, primary, "INSERT INTO app.t VALUES (1)")
		if err := r.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
		if n := rows(1); n != 1 {
			t.Errorf("%d rows with id 1 on the replica, want 1", n)
		}
	})

	t.Run("paused", func(t *testing.T) {
		if err := r.PauseReplication(ctx); err != nil {
			t.Fatal(err)
		}
		mustExec(t, primary, "INSERT INTO app.t VALUES (2)")
		// Once the replica has received the row, only the paused SQL thread
		// keeps it from showing.
		waitReceived(t, ctx, r)
		if n := rows(2); n != 0 {
			t.Errorf("%d rows with id 2 on the paused replica, want 0", n)
		}
		short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancelShort()
		if err := r.WaitCaughtUp(short); err == nil {
			t.Error("WaitCaughtUp returned nil while replication is paused")
		}
		if err := r.ResumeReplication(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
		if n := rows(2); n != 1 {
			t.Errorf("%d rows with id 2 after resuming, want 1", n)
		}
	})

	t.Run("reader cannot write", func(t *testing.T) {
		// On the replica, read_only answers first (1290), before privileges.
		_, err := reader.ExecContext(ctx, "INSERT INTO t VALUES (3)")
		if n := errorNumber(err); n != 1290 && n != 1142 {
			t.Errorf("INSERT as the reader on the replica: %v, want error 1290 (read-only) or 1142 (command denied)", err)
		}
		// The reader exists on the primary too (it replicated from there),
		// where only its lack of privileges stops it: not read_only, which
		// does not stop root.
		cfg, err := mysql.ParseDSN(r.ReaderDSN("app"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Addr = r.Primary.Addr()
		onPrimary := openDB(t, cfg.FormatDSN())
		_, err = onPrimary.ExecContext(ctx, "INSERT INTO t VALUES (3)")
		if n := errorNumber(err); n != 1142 { // ER_TABLEACCESS_DENIED_ERROR
			t.Errorf("INSERT as the reader on the primary: %v, want error 1142 (command denied)", err)
		}
		var n int
		if err := onPrimary.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
			t.Errorf("SELECT as the reader: %v", err)
		}
	})

	t.Run("freeze", func(t *testing.T) {
		if err := r.Replica.Freeze(); err != nil {
			t.Fatal(err)
		}
		impatient := openDB(t, r.ReaderDSN("app")+"&timeout=1s&readTimeout=1s")
		began := time.Now()
		var one int
		err := impatient.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		if err == nil {
			t.Fatal("query on a frozen server succeeded")
		}
		t.Logf("frozen: %v after %v", err, time.Since(began).Round(time.Millisecond))
		if err := r.Replica.Thaw(); err != nil {
			t.Fatal(err)
		}
		if err := impatient.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("after Thaw: %v", err)
		}
	})

	t.Run("stop frozen", func(t *testing.T) {
		if err := r.Replica.Freeze(); err != nil {
			t.Fatal(err)
		}
		pids := []int{r.Primary.Pid(), r.Replica.Pid()}
		began := time.Now()
		stopped = true
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(began); d > stopTimeout/2 {
			t.Errorf("Stop took %v: a frozen server should end on SIGTERM after SIGCONT", d)
		}
		for _, pid := range pids {
			if processAlive(pid) {
				t.Errorf("pid %d alive after Stop", pid)
			}
		}
	})
}

// waitReceived waits until the replica's I/O thread has everything the
// primary has written.
func waitReceived(t *testing.T, ctx context.Context, r *Replicated) {
	t.Helper()
	primary, replica := r.Primary.rootDB(), r.Replica.rootDB()
	defer primary.Close()
	defer replica.Close()
	var pos string
	if err := primary.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos); err != nil {
		t.Fatal(err)
	}
	for {
		status, err := slaveStatus(ctx, replica)
		if err != nil {
			t.Fatal(err)
		}
		if status["Gtid_IO_Pos"] == pos {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replica received %q, primary at %q", status["Gtid_IO_Pos"], pos)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// errorNumber returns the server's error number in err, or 0.
func errorNumber(err error) uint16 {
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		return myErr.Number
	}
	return 0
}
