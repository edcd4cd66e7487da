// Package mariadb starts throwaway MariaDB servers for tests and demos.
//
// [Start] initialises a fresh data directory in a temporary directory and runs
// mariadbd on it, listening on 127.0.0.1 only, on a port chosen at random in
// [20000, 32000). That range lies below the kernel's ephemeral port range
// (32768–60999), whose ports are also handed to outgoing connections and so
// can be taken for a minute after a heavy test run. If the port is taken
// anyway, Start tries again on another one.
//
// The server is tuned for fast tests, not durability (unless [EnvDurable] is
// set): InnoDB flushes its log once a second rather than at every commit, and
// the doublewrite buffer and the binary log are off. Root has an empty
// password and may connect over TCP.
//
// Each call starts its own server with its own directory, socket and port, so
// several test binaries (go test runs packages in parallel) can each run one.
//
// On Linux the server is killed by the kernel when the process that started it
// dies, even by SIGKILL or a test timeout. Its temporary directory is then
// left behind and is removed by the next Start on this machine.
//
// [StartReplicated] starts a primary and an asynchronous replica of it, and
// [StartGalera] a Galera cluster; their servers are made and tuned the same
// way. [Server.Freeze] makes any server hang.
package mariadb

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// EnvDurable, when set to anything, makes servers durable: the redo log is
// written and flushed at every commit and the doublewrite buffer is on, as a
// production server runs. Benchmarks that claim durability set it.
const EnvDurable = "KEYSTORE_MARIADB_DURABLE"

// ErrNotInstalled is returned by [Start], [StartReplicated] and [StartGalera]
// when the MariaDB server programs (mariadbd or mysqld, and
// mariadb-install-db or mysql_install_db) are neither on PATH nor in the
// usual directories.
var ErrNotInstalled = errors.New("mariadb: mariadbd or mariadb-install-db not found on PATH or in " +
	strings.Join(searchDirs, ", ") +
	": install the Debian package `mariadb-server` (`apt-get install -y mariadb-server`) or set KEYSTORE_TEST_DSN")

var searchDirs = []string{"/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin"}

const (
	portMin, portMax = 20000, 32000 // below the ephemeral range; see the package doc
	startAttempts    = 5            // ports tried before Start gives up
	readyTimeout     = 30 * time.Second
	pollInterval     = 50 * time.Millisecond
	stopTimeout      = 10 * time.Second
	dirPrefix        = "keystore-mariadb-"
	// tmpDirName is the server's own --tmpdir, in its directory: bootstraps
	// (mariadb-install-db) sharing /tmp failed about one in three when ten
	// ran at once ("Unknown table 'mysql.tmp_user_sys'", once a crash); with
	// their own, none of twenty did.
	tmpDirName = "tmp"
	ownerFile  = "owner.pid" // pid of the process that called Start
)

// errExitedEarly marks a server that exited before it was ready; Start then
// tries another port.
var errExitedEarly = errors.New("mariadb: server exited before it was ready")

// Server is a running throwaway MariaDB server. Its methods are safe for
// concurrent use.
type Server struct {
	bin     string // mariadbd
	cfg     config
	dir     string // temporary directory holding everything below
	dataDir string
	socket  string
	errLog  string
	pidFile string

	// ops serialises what starts and stops the process (Start, Restart,
	// Stop, Kill, Freeze, Thaw), which may take a minute. mu guards the
	// fields below for as long as a read or a write of them takes, so that
	// Addr, Pid and Version answer during a Restart; writers hold both.
	ops     sync.Mutex
	mu      sync.Mutex
	port    int
	version string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has exited
	started bool          // a start has succeeded: Restart leaves out cfg.firstArgs
	frozen  bool          // Freeze has stopped the process
	removed bool          // Stop has run
}

// config says how a Server runs mariadbd; the zero value is what [Start]
// does. Replicas and Galera nodes (replica.go, galera.go) fill it in.
type config struct {
	binlog    bool     // keep the binary log on (Start turns it off)
	args      []string // more mariadbd options; they come after, and so override, the defaults
	firstArgs []string // options for the first start only, not for Restart (e.g. --wsrep-new-cluster)
	// prepare runs before each start attempt, with the attempt's number
	// (0 first, again 0 for each Restart) and MySQL port. It may write an
	// option file and return its path, which mariadbd then reads through
	// --defaults-file instead of reading none.
	prepare func(s *Server, attempt, port int) (defaultsFile string, err error)
	runAs   *account // run mariadbd as this user, owning the directory; nil: as ourselves
	// ready, if set, must also answer true (on a connection as root) before
	// a start counts as done; a Galera node waits for Synced with it.
	ready        func(ctx context.Context, db *sql.DB) bool
	readyTimeout time.Duration // 0: readyTimeout
}

// account is a user other than ourselves to run mariadbd as.
type account struct {
	name     string
	uid, gid int
}

// Start initialises a data directory and starts a server on it. It returns
// once the server accepts connections from root over TCP, or with an error
// that includes the tail of the server's error log. ctx bounds the start
// only: cancelling it later does not stop the server; call [Server.Stop].
//
// Start returns an error matching [ErrNotInstalled] if MariaDB is missing.
// Initialising takes about a second and starting about half a second.
func Start(ctx context.Context) (*Server, error) {
	s, err := newServer(config{})
	if err != nil {
		return nil, err
	}
	if err := s.initDataDir(ctx); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

// newServer makes the directory of a server that has neither a data
// directory nor a process yet. With cfg.runAs the directory belongs to that
// user and lies where the user can reach it.
func newServer(cfg config) (*Server, error) {
	bin := findProgram("mariadbd", "mysqld")
	if bin == "" || findProgram("mariadb-install-db", "mysql_install_db") == "" {
		return nil, ErrNotInstalled
	}
	removeStaleDirs()
	dir, err := makeDir(cfg.runAs)
	if err != nil {
		return nil, err
	}
	return &Server{
		bin:     bin,
		cfg:     cfg,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		socket:  filepath.Join(dir, "mysqld.sock"),
		errLog:  filepath.Join(dir, "error.log"),
		pidFile: filepath.Join(dir, "mariadbd.pid"),
	}, nil
}

// DSN returns a go-sql-driver/mysql DSN for root over TCP, with parseTime
// and interpolateParams on. database may be empty.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("root@tcp(%s)/%s?parseTime=true&interpolateParams=true", s.Addr(), database)
}

// Addr returns the server's TCP address, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// tcpPort returns the server's port.
func (s *Server) tcpPort() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// Version returns the server's SELECT VERSION(), e.g. "10.11.6-MariaDB-0+deb12u1".
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Pid returns the process id of the server, or 0 if it is not running.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || isClosed(s.exited) {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop shuts the server down with SIGTERM, sends SIGKILL if it has not
// exited within 10 seconds, and removes its directory. Calling Stop again
// does nothing.
func (s *Server) Stop() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.removed {
		return nil
	}
	s.removed = true
	s.halt(syscall.SIGTERM)
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("mariadb: removing %s: %w", s.dir, err)
	}
	return nil
}

// Kill ends the server with SIGKILL, as a crash would, and waits until it
// has exited. The data directory is kept: [Server.Restart] runs InnoDB's
// crash recovery on it.
func (s *Server) Kill() {
	s.ops.Lock()
	defer s.ops.Unlock()
	s.halt(syscall.SIGKILL)
}

// Restart starts a server that has been killed (or has died) on the same
// data directory, on the same port if it is still free. It fails if the
// server is running or has been stopped.
func (s *Server) Restart(ctx context.Context) error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.removed {
		return errors.New("mariadb: Restart after Stop")
	}
	if !isClosed(s.exited) {
		return errors.New("mariadb: Restart of a running server")
	}
	return s.startLocked(ctx)
}

// halt signals the server and waits for it to exit, escalating to SIGKILL
// after stopTimeout. A frozen server is thawed first, so that it can act on
// SIGTERM. s.ops must be held.
func (s *Server) halt(sig syscall.Signal) {
	if s.cmd == nil || isClosed(s.exited) {
		return
	}
	if s.frozen {
		_ = thaw(s.cmd.Process)
		s.setFrozen(false)
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *Server) start(ctx context.Context) error {
	s.ops.Lock()
	defer s.ops.Unlock()
	return s.startLocked(ctx)
}

// startLocked runs mariadbd, trying other ports while it exits early (most
// often because its port is taken). The current port, if any, is tried
// first, so that a restarted server keeps its DSN. s.ops must be held.
func (s *Server) startLocked(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port := s.port
		if attempt > 0 || port == 0 {
			port = pickPort()
		}
		if err = s.run(ctx, attempt, port); !errors.Is(err, errExitedEarly) || ctx.Err() != nil {
			if err == nil {
				s.started = true
			}
			return err
		}
	}
	return fmt.Errorf("mariadb: no start in %d attempts, last: %w", startAttempts, err)
}

// run starts mariadbd on port and waits until it is ready.
func (s *Server) run(ctx context.Context, attempt, port int) error {
	os.Remove(s.errLog) // so that the log shown on failure is this attempt's

	defaults := "--no-defaults" // never read /etc/mysql
	if s.cfg.prepare != nil {
		file, err := s.cfg.prepare(s, attempt, port)
		if err != nil {
			return err
		}
		if file != "" {
			defaults = "--defaults-file=" + file
		}
	}
	args := []string{
		defaults, // must come first
		"--datadir=" + s.dataDir,
		"--tmpdir=" + filepath.Join(s.dir, tmpDirName),
		"--socket=" + s.socket,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + s.pidFile,
		"--log-error=" + s.errLog,
		"--innodb-buffer-pool-size=128M",
		"--max-connections=500",
		"--skip-name-resolve",
	}
	if !s.cfg.binlog {
		args = append(args, "--skip-log-bin")
	}
	if os.Getenv(EnvDurable) != "" {
		args = append(args, "--innodb-log-file-size=64M", "--innodb-flush-log-at-trx-commit=1", "--innodb-doublewrite=1")
	} else {
		args = append(args, "--innodb-log-file-size=8M", "--innodb-flush-log-at-trx-commit=2", "--innodb-doublewrite=0")
	}
	if os.Geteuid() == 0 && s.cfg.runAs == nil {
		args = append(args, "--user=root") // mariadbd refuses to run as root otherwise
	}
	args = append(args, s.cfg.args...)
	if !s.started {
		args = append(args, s.cfg.firstArgs...)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.SysProcAttr = sysProcAttr(s.cfg.runAs)
	if err := startFromLockedThread(cmd); err != nil {
		return fmt.Errorf("mariadb: starting %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited, s.port, s.frozen = cmd, exited, port, false
	s.mu.Unlock()

	kill := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	timeout := s.cfg.readyTimeout
	if timeout == 0 {
		timeout = readyTimeout
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return fmt.Errorf("%w (port %d, %v)%s", errExitedEarly, port, cmd.ProcessState, s.logTail())
		case <-ctx.Done():
			kill()
			return fmt.Errorf("mariadb: start: %w", ctx.Err())
		case <-deadline.C:
			kill()
			return fmt.Errorf("mariadb: not ready within %v on port %d%s", timeout, port, s.logTail())
		case <-tick.C:
		}
		if version, ok := s.probe(ctx, port); ok {
			s.mu.Lock()
			s.version = version
			s.mu.Unlock()
			return nil
		}
	}
}

// rootDB opens connections as root to the server's current address, for
// this package's own statements. The caller closes it. Reads time out after
// 30 seconds, so that a frozen server fails a call whose ctx has no deadline.
func (s *Server) rootDB() *sql.DB {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "tcp"
	cfg.Addr = s.Addr()
	cfg.Timeout = 5 * time.Second
	cfg.ReadTimeout = 30 * time.Second
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		panic(err) // only a malformed cfg fails, and this one is fixed
	}
	return sql.OpenDB(conn)
}

// exec runs statements as root, one after another.
func (s *Server) exec(ctx context.Context, stmts ...string) error {
	db := s.rootDB()
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("mariadb: %s on %s: %w", q, s.Addr(), err)
		}
	}
	return nil
}

// probe reports whether this server answers on port, and its version. It
// compares @@datadir with ours: if our mariadbd could not bind the port
// because another server holds it, that other server must not pass for ours.
func (s *Server) probe(ctx context.Context, port int) (version string, ok bool) {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cfg.Timeout = time.Second
	cfg.ReadTimeout = time.Second   // a port held by something silent must not stall the loop
	cfg.Logger = &mysql.NopLogger{} // refused handshakes while starting are expected
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return "", false
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var dataDir string
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@datadir").Scan(&version, &dataDir); err != nil {
		return "", false
	}
	if filepath.Clean(dataDir) != filepath.Clean(s.dataDir) {
		return "", false
	}
	if s.cfg.ready != nil && !s.cfg.ready(ctx, db) {
		return "", false
	}
	return version, true
}

// initDataDir runs mariadb-install-db. Root gets an ordinary (empty)
// password instead of unix-socket authentication, so that it can connect
// over TCP. The redo log is made small (8 MB instead of 96 MB) so that the
// directory takes about 25 MB; if this install-db does not accept that,
// it runs again without.
func (s *Server) initDataDir(ctx context.Context) error {
	installDB := findProgram("mariadb-install-db", "mysql_install_db")
	if installDB == "" {
		return ErrNotInstalled
	}
	args := []string{
		"--no-defaults",
		"--datadir=" + s.dataDir,
		"--tmpdir=" + filepath.Join(s.dir, tmpDirName),
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
	}
	name := userName()
	if s.cfg.runAs != nil {
		name = s.cfg.runAs.name
	}
	if name != "" {
		args = append(args, "--user="+name)
	}
	out, err := exec.CommandContext(ctx, installDB, append(args, "--innodb-log-file-size=8M")...).CombinedOutput()
	if err != nil && ctx.Err() == nil {
		os.RemoveAll(s.dataDir)
		out, err = exec.CommandContext(ctx, installDB, args...).CombinedOutput()
	}
	if err != nil {
		return fmt.Errorf("mariadb: %s: %w\n%s", installDB, err, tail(out, 20))
	}
	return s.chown()
}

// copyDataDir gives s a copy of from's data directory (cp -a), which is
// much faster than initialising another. from must not be running.
func (s *Server) copyDataDir(ctx context.Context, from *Server) error {
	if out, err := exec.CommandContext(ctx, "cp", "-a", from.dataDir, s.dataDir).CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb: copying %s: %w\n%s", from.dataDir, err, tail(out, 20))
	}
	return s.chown()
}

// chown gives s's whole directory to cfg.runAs, if set.
func (s *Server) chown() error {
	if s.cfg.runAs == nil {
		return nil
	}
	err := filepath.WalkDir(s.dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, s.cfg.runAs.uid, s.cfg.runAs.gid)
	})
	if err != nil {
		return fmt.Errorf("mariadb: %w", err)
	}
	return nil
}

// logTail returns the end of the error log, formatted to follow an error message.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.errLog)
	if err != nil || len(b) == 0 {
		return " (error log " + s.errLog + " is empty)"
	}
	return "; end of " + s.errLog + ":\n" + tail(b, 20)
}

// startFromLockedThread starts cmd from one OS thread that never exits.
//
// The kernel sends Pdeathsig (see sysProcAttr) when the *thread* that forked
// the child exits, not when the process does. The Go runtime may run a
// goroutine on any thread and ends threads that a goroutine left locked, so
// a server forked from an ordinary goroutine could be killed at a random
// moment. Forking always from this one goroutine, locked to its thread and
// never returning, ties the servers' lives to the test process itself.
func startFromLockedThread(cmd *exec.Cmd) error {
	forkerOnce.Do(func() {
		forkRequests = make(chan forkRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: this goroutine never returns
			for r := range forkRequests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	forkRequests <- forkRequest{cmd, done}
	return <-done
}

type forkRequest struct {
	cmd  *exec.Cmd
	done chan<- error
}

var (
	forkerOnce   sync.Once
	forkRequests chan forkRequest
)

// findProgram returns the path of the first of names found on PATH or in
// searchDirs, or "".
func findProgram(names ...string) string {
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		for _, dir := range searchDirs {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	return ""
}

// pickPort returns a random port in [portMin, portMax) that is free right
// now and that it has not returned before in this process (a Galera node
// needs several ports picked before any is bound). Another process may
// still take it before mariadbd binds it; run notices and Start tries again.
func pickPort() int {
	pickedMu.Lock()
	defer pickedMu.Unlock()
	var port int
	for range 20 {
		port = portMin + rand.IntN(portMax-portMin)
		if picked[port] {
			continue
		}
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			break
		}
	}
	picked[port] = true
	return port
}

var (
	pickedMu sync.Mutex
	picked   = map[int]bool{}
)

// tempBase is where server directories are made. The socket path inside
// must stay under the 108-byte limit of unix socket addresses.
func tempBase() string {
	if base := os.TempDir(); len(base) <= 64 {
		return base
	}
	return "/tmp"
}

// makeDir creates the server's directory and records the calling process
// as its owner, for removeStaleDirs. For a server run as another user, the
// directory belongs to that user and lies in /tmp if that user could not
// reach it in tempBase (as in a TMPDIR under /root).
func makeDir(runAs *account) (string, error) {
	base := tempBase()
	if runAs != nil && !reachable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, dirPrefix)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	if err == nil {
		err = os.Mkdir(filepath.Join(dir, tmpDirName), 0o755)
	}
	if err == nil && runAs != nil {
		err = os.Chown(dir, runAs.uid, runAs.gid)
		if err == nil {
			err = os.Chown(filepath.Join(dir, tmpDirName), runAs.uid, runAs.gid)
		}
	}
	if err != nil {
		if dir != "" {
			os.RemoveAll(dir)
		}
		return "", fmt.Errorf("mariadb: %w", err)
	}
	return dir, nil
}

// reachable reports whether every user may traverse dir and its parents.
func reachable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// removeStaleDirs removes the directories of servers whose owner process
// and server process have both gone without calling Stop (a test binary
// without keystoretest.Main, or one that was killed). A directory whose
// owner or server may still be alive, or that has no owner file, is kept.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(tempBase(), dirPrefix+"*"))
	if tempBase() != "/tmp" {
		more, _ := filepath.Glob(filepath.Join("/tmp", dirPrefix+"*")) // see makeDir
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		owner, ok := readPid(filepath.Join(dir, ownerFile))
		if !ok || owner == os.Getpid() || processAlive(owner) {
			continue
		}
		if server, ok := readPid(filepath.Join(dir, "mariadbd.pid")); ok && processAlive(server) {
			continue
		}
		os.RemoveAll(dir)
	}
}

func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// userName returns the name of the effective user, for mariadb-install-db's
// --user (it owns the data directory); "" if unknown.
func userName() string {
	if os.Geteuid() == 0 {
		return "root"
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

func isClosed(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}
