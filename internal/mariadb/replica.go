package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// Replicated is a primary and a replica of it, replicating asynchronously
// by MariaDB's GTIDs. Each is a throwaway [Server] as from [Start], with the
// primary's binary log on (ROW format) and the replica read_only.
//
// A replica restarted after [Server.Kill] resumes replicating by itself,
// from where it had applied. The primary should keep its port across a
// Restart (it does unless another process took the port meanwhile): the
// replica knows it by its address.
type Replicated struct {
	Primary, Replica *Server
}

// The account of ReaderDSN. read_only does not stop root (or any user with
// READ ONLY ADMIN), so a program that wrongly writes through the replica
// would go unnoticed as root.
const (
	readerUser     = "reader"
	readerPassword = "reader"
)

// StartReplicated starts a primary and a replica replicating from it, and
// creates the user of [Replicated.ReaderDSN]. It returns once the replica
// has applied everything the primary has, or with an error after stopping
// both. ctx bounds the start only; call [Replicated.Stop].
//
// It returns an error matching [ErrNotInstalled] if MariaDB is missing.
// The replica's data directory is a copy of the primary's, so the pair
// takes about as long to start as one server.
func StartReplicated(ctx context.Context) (*Replicated, error) {
	primary, err := newServer(config{
		binlog: true,
		args:   []string{"--server-id=1", "--log-bin=mysql-bin", "--binlog-format=ROW"},
	})
	if err != nil {
		return nil, err
	}
	replica, err := newServer(config{
		// No --skip-slave-start: a fresh replica has nothing to start, and
		// a restarted one should go on replicating.
		args: []string{"--server-id=2", "--read-only=ON", "--relay-log=relay-bin", "--slave-net-timeout=10"},
	})
	if err != nil {
		primary.Stop()
		return nil, err
	}
	r := &Replicated{Primary: primary, Replica: replica}
	if err := r.start(ctx); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

func (r *Replicated) start(ctx context.Context) error {
	if err := r.Primary.initDataDir(ctx); err != nil {
		return err
	}
	if err := r.Replica.copyDataDir(ctx, r.Primary); err != nil {
		return err
	}
	var replicaErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		replicaErr = r.Replica.start(ctx)
	}()
	primaryErr := r.Primary.start(ctx)
	wg.Wait()
	if err := errors.Join(primaryErr, replicaErr); err != nil {
		return err
	}
	err := r.Replica.exec(ctx,
		"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT="+strconv.Itoa(r.Primary.tcpPort())+
			", MASTER_USER='root', MASTER_PASSWORD='', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
		"START SLAVE")
	if err != nil {
		return err
	}
	err = r.Primary.exec(ctx,
		"CREATE USER '"+readerUser+"'@'%' IDENTIFIED BY '"+readerPassword+"'",
		"GRANT SELECT ON *.* TO '"+readerUser+"'@'%'")
	if err != nil {
		return err
	}
	return r.WaitCaughtUp(ctx)
}

// ReaderDSN returns a go-sql-driver/mysql DSN for the replica as a user that
// may only SELECT (any database), with parseTime and interpolateParams on.
// database may be empty.
func (r *Replicated) ReaderDSN(database string) string {
	return fmt.Sprintf("%s:%s@tcp(%s)/%s?parseTime=true&interpolateParams=true",
		readerUser, readerPassword, r.Replica.Addr(), database)
}

// PauseReplication stops the replica's SQL thread: the replica goes on
// receiving the primary's transactions but applies none, so rows committed
// on the primary are invisible there until [Replicated.ResumeReplication].
func (r *Replicated) PauseReplication(ctx context.Context) error {
	return r.Replica.exec(ctx, "STOP SLAVE SQL_THREAD")
}

// ResumeReplication starts the replica's SQL thread again. It returns
// without waiting for the replica to catch up; see [Replicated.WaitCaughtUp].
func (r *Replicated) ResumeReplication(ctx context.Context) error {
	return r.Replica.exec(ctx, "START SLAVE SQL_THREAD")
}

// WaitCaughtUp waits until the replica has applied every transaction the
// primary had committed when it was called (the primary's gtid_binlog_pos).
// While replication is paused, it waits until ctx ends. It fails early if
// replication has stopped on an error, with that error.
func (r *Replicated) WaitCaughtUp(ctx context.Context) error {
	primary := r.Primary.rootDB()
	defer primary.Close()
	var pos string
	if err := primary.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("mariadb: reading the primary's gtid_binlog_pos: %w", err)
	}
	if pos == "" {
		return nil // nothing written yet
	}
	replica := r.Replica.rootDB()
	defer replica.Close()
	for {
		var waited int
		err := replica.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, 0.5)", pos).Scan(&waited)
		if err != nil {
			return fmt.Errorf("mariadb: waiting for the replica to reach %s: %w", pos, err)
		}
		if waited == 0 {
			return nil
		}
		if err := replicationError(ctx, replica); err != nil {
			return err
		}
	}
}

// replicationError returns the error on which replication has stopped, if
// it has. An I/O thread that is reconnecting has not stopped.
func replicationError(ctx context.Context, db *sql.DB) error {
	status, err := slaveStatus(ctx, db)
	if err != nil {
		return err
	}
	if status["Last_SQL_Errno"] != "0" && status["Slave_SQL_Running"] == "No" {
		return fmt.Errorf("mariadb: replication stopped: SQL thread error %s: %s", status["Last_SQL_Errno"], status["Last_SQL_Error"])
	}
	if status["Last_IO_Errno"] != "0" && status["Slave_IO_Running"] == "No" {
		return fmt.Errorf("mariadb: replication stopped: I/O thread error %s: %s", status["Last_IO_Errno"], status["Last_IO_Error"])
	}
	return nil
}

// slaveStatus returns SHOW SLAVE STATUS by column name; empty if the
// server replicates from nothing.
func slaveStatus(ctx context.Context, db *sql.DB) (map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, fmt.Errorf("mariadb: SHOW SLAVE STATUS: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	status := map[string]string{}
	if rows.Next() {
		values := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range values {
			ptrs[i] = &values[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, c := range cols {
			status[c] = values[i].String
		}
	}
	return status, rows.Err()
}

// Stop stops both servers (see [Server.Stop]), at once.
func (r *Replicated) Stop() error {
	var replicaErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		replicaErr = r.Replica.Stop()
	}()
	primaryErr := r.Primary.Stop()
	wg.Wait()
	return errors.Join(primaryErr, replicaErr)
}
