package mariadb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrGaleraNotInstalled is returned by [StartGalera] when the Galera library
// or rsync (which copies a node's data to a joining node) is missing.
var ErrGaleraNotInstalled = errors.New("mariadb: Galera needs the Debian packages galera-4 and rsync " +
	"(`apt-get install -y galera-4 rsync`, or scripts/ensure-mariadb.sh as root)")

// galeraLibs are the places distributions put the Galera 4 library.
var galeraLibs = []string{
	"/usr/lib/galera/libgalera_smm.so", // Debian, Ubuntu
	"/usr/lib/galera-4/libgalera_smm.so",
	"/usr/lib64/galera-4/libgalera_smm.so", // Red Hat
	"/usr/lib64/galera/libgalera_smm.so",
}

const (
	galeraReadyTimeout = 90 * time.Second // a joiner waits for a donor, then copies
	galeraClusterName  = "keystore-test"
)

// Cluster is a Galera cluster of throwaway servers on loopback, every node
// a primary. Each node is a [Server]: DSN, Addr, Pid, Kill, Freeze and Stop
// work as for one from [Start]. Restart of a killed node rejoins the
// cluster (by a full state transfer) and returns once the node is Synced; it
// cannot bring back a cluster whose nodes have all gone.
//
// Reads on one node are not causally consistent with writes on another: use
// SET SESSION wsrep_sync_wait=1 before a read that must see them. Two
// transactions writing the same row or unique key on different nodes end
// with error 1213 for the one that commits second.
type Cluster struct {
	Nodes []*Server

	mu    sync.Mutex
	lib   string
	ports []galeraPorts // by node
}

// galeraPorts are a node's ports besides its MySQL port.
type galeraPorts struct {
	gcomm int // group communication; in every node's wsrep_cluster_address
	ist   int // incremental state transfer, received from a donor
	sst   int // full state transfer (rsync daemon while joining)
}

// StartGalera starts a cluster of nodes servers: the first bootstraps it,
// the others join it, getting their data from a node already in by rsync
// (SST). It returns once every node is Synced and counts them all, or with
// an error after stopping them. ctx bounds the start only; call
// [Cluster.Stop]. Three nodes take about 7 seconds.
//
// When run as root, the nodes run as the user mysql (rsync's daemon, which
// receives the data, would drop root's privileges to nobody and then could
// not write a node's directory), in directories owned by it. StartGalera
// is Linux-only. It returns an error matching [ErrNotInstalled] or
// [ErrGaleraNotInstalled] if software is missing.
func StartGalera(ctx context.Context, nodes int) (*Cluster, error) {
	if nodes < 1 {
		return nil, fmt.Errorf("mariadb: StartGalera with %d nodes", nodes)
	}
	if runtime.GOOS != "linux" {
		return nil, errors.New("mariadb: StartGalera is Linux-only")
	}
	c := &Cluster{lib: findGaleraLib(), ports: make([]galeraPorts, nodes)}
	if c.lib == "" {
		return nil, fmt.Errorf("%w: no %s", ErrGaleraNotInstalled, strings.Join(galeraLibs, " nor "))
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, fmt.Errorf("%w: no rsync on PATH", ErrGaleraNotInstalled)
	}
	runAs, err := galeraAccount()
	if err != nil {
		return nil, err
	}
	for i := range nodes {
		cfg := config{
			args: []string{
				"--innodb-buffer-pool-size=64M",
				"--max-connections=200",
				// More than one applier: with one, a burst of conflicting
				// writes on several nodes sometimes froze the cluster for
				// a minute. The applier waited for a lock held by a local
				// transaction at COMMIT, which waited to be certified
				// after the write sets queued behind that same applier
				// (a cycle nothing broke for a minute). Other appliers
				// can go on certifying those write sets: no stall in 34
				// runs of the cluster tests since.
				"--wsrep-slave-threads=4",
			},
			prepare:      c.writeOptions(i),
			runAs:        runAs,
			ready:        synced,
			readyTimeout: galeraReadyTimeout,
		}
		if i == 0 {
			cfg.firstArgs = []string{"--wsrep-new-cluster"}
		}
		s, err := newServer(cfg)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
		c.ports[i] = galeraPorts{gcomm: pickPort(), ist: pickPort(), sst: pickPort()}
	}
	if err := c.start(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// start initialises one data directory for all nodes, bootstraps the first
// node and lets the others join. Each joiner is let into the membership
// before the next one starts: nodes joining at once disturb each other's
// join for seconds. Their state transfers still overlap (one waits while the
// only donor serves another).
func (c *Cluster) start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // on failure, ends the starts still running, so Stop need not wait for them
	first := c.Nodes[0]
	if err := first.initDataDir(ctx); err != nil {
		return err
	}
	for _, s := range c.Nodes[1:] {
		if err := s.copyDataDir(ctx, first); err != nil {
			return err
		}
	}
	if err := first.start(ctx); err != nil {
		return err
	}
	results := make([]chan error, len(c.Nodes))
	for i, s := range c.Nodes[1:] {
		done := make(chan error, 1)
		results[i+1] = done
		go func() { done <- s.start(ctx) }()
		if err := c.waitMembers(ctx, i+2, done); err != nil {
			return err
		}
	}
	var errs []error
	for _, done := range results[1:] {
		err := <-done
		done <- err // for waitMembers, which may have read it already and put it back
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.WaitSynced(ctx)
}

// waitMembers waits until the first node counts n members, or the start
// reporting to done has ended (then its result is put back).
func (c *Cluster) waitMembers(ctx context.Context, n int, done chan error) error {
	db := c.Nodes[0].rootDB()
	defer db.Close()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			done <- err
			return err
		case <-ctx.Done():
			return fmt.Errorf("mariadb: waiting for %d Galera members: %w", n, ctx.Err())
		case <-tick.C:
		}
		if st, err := wsrepStatus(ctx, db); err == nil && st.size >= n {
			return nil
		}
	}
}

// WaitSynced waits until every running node that is not frozen is Synced,
// in the primary component, and counts as many members as there are such
// nodes: after [Server.Kill] of a node, until the others have noticed (a
// few seconds); after [Server.Restart], until it has rejoined.
func (c *Cluster) WaitSynced(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last string
	for {
		ok, state, err := c.synced(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mariadb: Galera cluster not synced (%s): %w", last, ctx.Err())
		case <-tick.C:
		}
	}
}

// synced reports whether the cluster is as WaitSynced waits for it, and if
// not, why.
func (c *Cluster) synced(ctx context.Context) (ok bool, state string, err error) {
	var live []*Server
	for _, s := range c.Nodes {
		if s.Pid() != 0 && !s.isFrozen() {
			live = append(live, s)
		}
	}
	for _, s := range live {
		db := s.rootDB()
		st, err := wsrepStatus(ctx, db)
		db.Close()
		if err != nil {
			return false, "", err
		}
		if !st.synced() || st.size != len(live) {
			return false, fmt.Sprintf("%s: %s, %s, %d members of %d nodes running",
				s.Addr(), st.state, st.status, st.size, len(live)), nil
		}
	}
	return true, "", nil
}

// Stop stops every node (see [Server.Stop]), the last first. One at a time
// each leaves in a tenth of a second; all at once, they take seconds.
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.Nodes) - 1; i >= 0; i-- {
		errs = append(errs, c.Nodes[i].Stop())
	}
	return errors.Join(errs...)
}

// writeOptions returns node i's config.prepare: it writes the node's option
// file, which the state transfer scripts read too (they would read
// /etc/mysql without one). A retry after a failed attempt gets new ports,
// since one of them may have been taken.
func (c *Cluster) writeOptions(i int) func(s *Server, attempt, port int) (string, error) {
	return func(s *Server, attempt, port int) (string, error) {
		c.mu.Lock()
		if attempt > 0 {
			c.ports[i] = galeraPorts{gcomm: pickPort(), ist: pickPort(), sst: pickPort()}
		}
		p := c.ports[i]
		var peers []string
		for _, q := range c.ports {
			peers = append(peers, "127.0.0.1:"+strconv.Itoa(q.gcomm))
		}
		c.mu.Unlock()

		provider := []string{
			"gmcast.listen_addr=tcp://127.0.0.1:" + strconv.Itoa(p.gcomm),
			"ist.recv_addr=127.0.0.1:" + strconv.Itoa(p.ist),
			"gcache.size=32M",
			"pc.recovery=FALSE", // a restarted node joins by address, not from a saved view
			// A killed node is out of the membership (and writes on the
			// others go on) after 3 s instead of 5.
			"evs.suspect_timeout=PT3S",
		}
		options := fmt.Sprintf(`# Written by package internal/mariadb for a throwaway Galera node.
[mysqld]
datadir=%s
socket=%s
port=%d
bind-address=127.0.0.1
binlog_format=ROW
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=%s
wsrep_cluster_name=%s
wsrep_cluster_address=gcomm://%s
wsrep_node_name=node%d
wsrep_node_address=127.0.0.1:%d
wsrep_node_incoming_address=127.0.0.1:%d
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:%d
wsrep_provider_options="%s"

[sst]
sst-syslog=-1
sst-log-archive=0
`, s.dataDir, s.socket, port, c.lib, galeraClusterName, strings.Join(peers, ","),
			i+1, p.gcomm, port, p.sst, strings.Join(provider, "; "))
		file := filepath.Join(s.dir, "my.cnf")
		if err := os.WriteFile(file, []byte(options), 0o644); err != nil {
			return "", fmt.Errorf("mariadb: %w", err)
		}
		return file, nil
	}
}

// wsrepState is what a node says of itself and its cluster.
type wsrepState struct {
	state  string // wsrep_local_state_comment: Synced, Joining, Donor/Desynced...
	status string // wsrep_cluster_status: Primary, non-Primary, Disconnected
	ready  string // wsrep_ready: ON when it accepts queries
	size   int    // wsrep_cluster_size
}

func (st wsrepState) synced() bool {
	return st.state == "Synced" && st.status == "Primary" && st.ready == "ON"
}

func wsrepStatus(ctx context.Context, db *sql.DB) (wsrepState, error) {
	rows, err := db.QueryContext(ctx, `SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
		WHERE VARIABLE_NAME IN ('WSREP_LOCAL_STATE_COMMENT', 'WSREP_CLUSTER_STATUS', 'WSREP_READY', 'WSREP_CLUSTER_SIZE')`)
	if err != nil {
		return wsrepState{}, err
	}
	defer rows.Close()
	var st wsrepState
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return wsrepState{}, err
		}
		switch strings.ToUpper(name) {
		case "WSREP_LOCAL_STATE_COMMENT":
			st.state = value
		case "WSREP_CLUSTER_STATUS":
			st.status = value
		case "WSREP_READY":
			st.ready = value
		case "WSREP_CLUSTER_SIZE":
			st.size, _ = strconv.Atoi(value)
		}
	}
	return st, rows.Err()
}

// synced is a Galera node's config.ready.
func synced(ctx context.Context, db *sql.DB) bool {
	st, err := wsrepStatus(ctx, db)
	return err == nil && st.synced()
}

func findGaleraLib() string {
	for _, p := range galeraLibs {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// galeraAccount returns the user to run Galera nodes as: mysql when we are
// root (see StartGalera), nil (ourselves) otherwise.
func galeraAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("mysql")
	if err != nil {
		return nil, fmt.Errorf("mariadb: as root, Galera nodes run as the user mysql, and there is none "+
			"(the Debian package mariadb-server creates it): %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("mariadb: user mysql: %w", err)
	}
	return &account{name: u.Username, uid: uid, gid: gid}, nil
}
