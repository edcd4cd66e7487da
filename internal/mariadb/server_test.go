package mariadb

import (
	"context"
	"database/sql"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

func TestStartQueryStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	began := time.Now()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started MariaDB %s at %s in %v", s.Version(), s.Addr(), time.Since(began).Round(time.Millisecond))
	stopped := false
	defer func() {
		if !stopped {
			s.Stop()
		}
	}()

	if p := s.port; p < portMin || p >= portMax {
		t.Errorf("port %d outside [%d, %d)", p, portMin, portMax)
	}
	if want := "root@tcp(" + s.Addr() + ")/mysql?parseTime=true&interpolateParams=true"; s.DSN("mysql") != want {
		t.Errorf("DSN = %q, want %q", s.DSN("mysql"), want)
	}

	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		t.Fatal(err)
	}

	// Diagnose shows a transaction waiting for another's lock, and which.
	for _, q := range []string{"CREATE DATABASE diag", "CREATE TABLE diag.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
		"INSERT INTO diag.t VALUES (1, 0)"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT v FROM diag.t WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	waiter := make(chan error, 1)
	go func() { // waits for tx's lock on row 1
		_, err := db.ExecContext(ctx, "UPDATE diag.t SET v = 2 WHERE id = 1")
		waiter <- err
	}()
	// InnoDB refreshes what its information_schema tables show only when
	// they were last read 0.1 s ago or more: polling faster sees nothing new.
	var diag string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if diag = s.Diagnose(ctx); strings.Contains(diag, "requesting_trx_id=") {
			break
		}
	}
	tx.Rollback()
	if err := <-waiter; err != nil {
		t.Errorf("the waiting UPDATE: %v", err)
	}
	for _, want := range []string{"trx_state=LOCK WAIT", "trx_state=RUNNING", "requesting_trx_id=",
		"trx_query=UPDATE diag.t SET v = 2", "end of " + s.errLog, "ready for connections"} {
		if !strings.Contains(diag, want) {
			t.Errorf("Diagnose() lacks %q:\n%s", want, diag)
		}
	}
	if strings.Contains(diag, "\nerror: ") {
		t.Errorf("a query of Diagnose failed:\n%s", diag)
	}
	db.Close()
	if !strings.Contains(version, "MariaDB") || version != s.Version() {
		t.Errorf("SELECT VERSION() = %q, Version() = %q", version, s.Version())
	}

	pid := s.Pid()
	if pid == 0 {
		t.Fatal("Pid() = 0 for a running server")
	}
	dir := s.dir
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	// Stop has waited for the process (it is reaped), so the pid is gone.
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("server pid %d still exists after Stop (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still exists after Stop (%v)", dir, err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestKillRestart crashes the server and restarts it on the same data
// directory and port: committed rows survive InnoDB's crash recovery.
func TestKillRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	exec := func(q string) {
		t.Helper()
		db, err := sql.Open("mysql", s.DSN(""))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE DATABASE crash")
	exec("CREATE TABLE crash.t (id INT PRIMARY KEY)")
	exec("INSERT INTO crash.t VALUES (1), (2)")

	dsn := s.DSN("crash")
	s.Kill()
	if s.Pid() != 0 {
		t.Fatal("Pid() != 0 after Kill")
	}
	// Addr and Pid answer while Restart waits for the server: Diagnose and
	// the cluster tests' stall watchdog call them then. The server counts
	// as ready only once the test has asked them a few times.
	asked := make(chan struct{})
	s.cfg.ready = func(ctx context.Context, db *sql.DB) bool { return isClosed(asked) }
	restarted := make(chan error, 1)
	go func() { restarted <- s.Restart(ctx) }()
	for range 5 {
		answered := make(chan struct{})
		go func() {
			s.Addr()
			s.Pid()
			close(answered)
		}()
		select {
		case <-answered:
		case <-time.After(time.Second):
			t.Fatal("Addr and Pid blocked during Restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(asked)
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err == nil {
		t.Error("Restart of a running server succeeded")
	}
	if s.DSN("crash") != dsn {
		t.Logf("port changed on restart: %s -> %s", dsn, s.DSN("crash"))
	}
	db, err := sql.Open("mysql", s.DSN("crash"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d rows after crash recovery, want 2", n)
	}
}

// TestTakenPort restarts a killed server while another process holds its
// port: the first attempt fails with "Address already in use" and Restart
// moves to another port.
func TestTakenPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	s.Kill()
	taken := s.Addr()
	l, err := net.Listen("tcp", taken)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Addr() == taken {
		t.Fatalf("restarted on the taken address %s", taken)
	}
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("moved from %s to %s", taken, s.Addr())
}

func TestTail(t *testing.T) {
	if got := tail([]byte("a\nb\nc\n"), 2); got != "b\nc" {
		t.Errorf("tail = %q", got)
	}
	if got := tail([]byte("a"), 5); got != "a" {
		t.Errorf("tail = %q", got)
	}
}
