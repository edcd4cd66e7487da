// Command race is keystore's main demo: the race behind the incident.
//
// N goroutines create a key for one new externalId, with the same new
// permissions, at the same instant. With keystore.CreateKey every call
// succeeds and exactly one identity exists. With the naive find-then-insert
// of the incident, every caller that looked for the identity before the
// winner committed it fails with "Duplicate entry" (MySQL 1062); in longer
// transactions, like the incident's, deadlocks (1213) join in. The program
// runs both races on the same server.
//
//	go run ./examples/race                     # starts a throwaway MariaDB
//	go run ./examples/race -n 200 -naive-rounds 10
//	KEYSTORE_DSN='root@tcp(127.0.0.1:3306)/' go run ./examples/race
//
// With no database in the DSN it creates and uses keystore_demo. It exits
// with status 1 if keystore returned any error or did not create exactly one
// identity.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/demodb"
	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/jmoiron/sqlx"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "race:", err)
		os.Exit(1)
	}
}

func run() error {
	n := flag.Int("n", 64, "number of concurrent CreateKey calls")
	rounds := flag.Int("naive-rounds", 5, "how many times the naive code runs the race (its failures vary from race to race)")
	dsnFlag := flag.String("dsn", "", "go-sql-driver/mysql DSN of the server to use\n(default $KEYSTORE_DSN; if both are empty, a throwaway MariaDB is started)")
	flag.Parse()
	if *n < 1 || *rounds < 1 {
		return errors.New("-n and -naive-rounds must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop() // Ctrl-C cancels ctx, run returns, and the deferred calls below still run

	// 1. A server: the one named by -dsn or $KEYSTORE_DSN, or a throwaway one
	//    that is stopped however run returns.
	dsn := cmp.Or(*dsnFlag, os.Getenv("KEYSTORE_DSN"))
	if dsn == "" {
		server, err := startServer(ctx)
		if err != nil {
			return err
		}
		defer stopServer(server)
		dsn = server.DSN("")
	}
	db, err := openDB(ctx, dsn, min(*n, 100))
	if err != nil {
		return err
	}
	defer db.Close()

	// 2. A Store per goroutine, as n service instances would each have, so
	//    that the calls race on the server (a Store's own calls for an owner
	//    it has not seen wait for the first of them instead). They count the
	//    transactions they had to run again.
	var retries atomic.Int64
	stores := make([]*keystore.Store, *n)
	for i := range stores {
		if stores[i], err = keystore.New(db, keystore.WithRetryOptions(
			keystore.OnRetry(func(attempt int, err error) { retries.Add(1) }))); err != nil {
			return err
		}
	}
	if err := stores[0].Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	// 3. The race: n calls for one new externalId, released at once. A fresh
	//    workspace per run makes the permissions new as well.
	suffix := randomHex(3)
	workspaceID, externalID := "ws_demo_"+suffix, "customer-"+suffix
	permissions := []string{"documents.read", "documents.write"}
	fmt.Printf("\nkeystore.CreateKey: %d goroutines, a Store each, one new externalId %q, new permissions %v\n", *n, externalID, permissions)
	created := make([]keystore.CreatedKey, *n)
	errs, elapsed := race(*n, func(i int) error {
		var err error
		created[i], err = stores[i].CreateKey(ctx, keystore.CreateKeyRequest{
			WorkspaceID: workspaceID,
			KeySpaceID:  "ks_demo",
			Prefix:      "demo",
			ExternalID:  externalID,
			Permissions: permissions,
			Ratelimits:  []keystore.Ratelimit{{Name: "requests", Limit: 100, Duration: time.Minute}},
		})
		return err
	})

	// 4. What happened, from the callers' side and in the database.
	failed, failures := summarize(errs)
	identityIDs := map[string]bool{}
	for i, c := range created {
		if errs[i] == nil {
			identityIDs[c.IdentityID] = true
		}
	}
	identities, err := countRows(ctx, db, `SELECT COUNT(*) FROM keystore_identities
		WHERE workspace_id = ? AND external_id = ?`, workspaceID, externalID)
	if err != nil {
		return fmt.Errorf("counting identities: %w", err)
	}
	var perSlug []struct {
		Slug string `db:"slug"`
		Rows int    `db:"n"`
	}
	if err := db.SelectContext(ctx, &perSlug, `SELECT slug, COUNT(*) AS n FROM keystore_permissions
		WHERE workspace_id = ? GROUP BY slug ORDER BY slug`, workspaceID); err != nil {
		return fmt.Errorf("counting permissions: %w", err)
	}
	fmt.Printf("  calls %d, succeeded %d, failed %d%s\n", *n, *n-failed, failed, failures)
	fmt.Printf("  identity ids returned: %d distinct; identity rows in the database: %d\n", len(identityIDs), identities)
	var slugs []string
	for _, p := range perSlug {
		slugs = append(slugs, fmt.Sprintf("%s=%d", p.Slug, p.Rows))
	}
	fmt.Printf("  permission rows per slug: %s\n", strings.Join(slugs, ", "))
	fmt.Printf("  retries: %d\n", retries.Load())
	fmt.Printf("  elapsed %v, %.0f keys/s\n", elapsed.Round(time.Millisecond), float64(*n)/elapsed.Seconds())

	// 5. For contrast: the same race through the incident's code path, a few
	//    times, each on a new externalId: how many callers lose depends on
	//    how the goroutines happen to be scheduled.
	fmt.Printf("\nnaive find-then-insert, no retry: %d races of %d goroutines, each on a new externalId\n", *rounds, *n)
	var naiveErrs []error
	var perRace []string
	var naiveElapsed time.Duration
	naiveIdentities := 0
	for r := range *rounds {
		naiveExternalID := fmt.Sprintf("naive-customer-%s-%d", suffix, r)
		errs, elapsed := race(*n, func(int) error {
			return naiveCreateKey(ctx, db, workspaceID, naiveExternalID)
		})
		failed, _ := summarize(errs)
		perRace = append(perRace, fmt.Sprint(failed))
		naiveErrs, naiveElapsed = append(naiveErrs, errs...), naiveElapsed+elapsed
		rows, err := countRows(ctx, db, `SELECT COUNT(*) FROM keystore_identities
			WHERE workspace_id = ? AND external_id = ?`, workspaceID, naiveExternalID)
		if err != nil {
			return fmt.Errorf("counting identities: %w", err)
		}
		naiveIdentities += rows
	}
	naiveFailed, naiveFailures := summarize(naiveErrs)
	fmt.Printf("  calls %d, succeeded %d, failed %d%s\n", len(naiveErrs), len(naiveErrs)-naiveFailed, naiveFailed, naiveFailures)
	fmt.Printf("  failed per race: %s\n", strings.Join(perRace, ", "))
	fmt.Printf("  identity rows in the database: %d (one per race); elapsed %v\n", naiveIdentities, naiveElapsed.Round(time.Millisecond))

	// 6. Read one of keystore's keys back. The plaintext was returned once by
	//    CreateKey and is not stored; Start is the part that is safe to show.
	if i := slices.IndexFunc(errs, func(err error) bool { return err == nil }); i >= 0 {
		k, err := stores[0].GetKey(ctx, workspaceID, created[i].KeyID)
		if err != nil {
			return fmt.Errorf("GetKey: %w", err)
		}
		fmt.Printf("\nGetKey %s:\n  start %q, externalId %q, identity %s\n  permissions %v, ratelimits %v, enabled %v\n",
			k.ID, k.Start, k.ExternalID, k.IdentityID, k.Permissions, describeRatelimits(k.Ratelimits), k.Enabled)
	}

	// 7. The verdict: keystore must have surfaced no error and created one identity.
	var problems []string
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("%d CreateKey calls failed", failed))
	}
	if identities != 1 || len(identityIDs) != 1 {
		problems = append(problems, fmt.Sprintf("%d identity rows and %d distinct identity ids, want 1 and 1", identities, len(identityIDs)))
	}
	for _, p := range perSlug {
		if p.Rows != 1 {
			problems = append(problems, fmt.Sprintf("%d rows for permission %s, want 1", p.Rows, p.Slug))
		}
	}
	if len(problems) > 0 {
		return errors.New("FAIL: " + strings.Join(problems, "; "))
	}
	fmt.Printf("\nOK: all %d CreateKey calls succeeded and exactly one identity exists.\n", *n)
	return nil
}

// naiveCreateKey is the shape of the code in the incident: look the identity
// up, insert it if it is missing, insert the key; one transaction, no retry.
// Between the SELECT and the INSERT another caller may create the identity,
// and the INSERT then fails with 1062. It writes to keystore's tables
// directly, so that both races run against the same schema.
func naiveCreateKey(ctx context.Context, db *sqlx.DB, workspaceID, externalID string) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // no-op after Commit

	var identityID string
	err = tx.GetContext(ctx, &identityID, `SELECT id FROM keystore_identities
		WHERE workspace_id = ? AND external_id = ? AND live = 1`, workspaceID, externalID)
	if errors.Is(err, sql.ErrNoRows) {
		identityID = "id_naive_" + randomHex(16)
		_, err = tx.ExecContext(ctx, `INSERT INTO keystore_identities
			(id, workspace_id, external_id, live, created_at, updated_at)
			VALUES (?, ?, ?, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))`, identityID, workspaceID, externalID)
	}
	if err != nil {
		return err
	}
	keyID := "key_naive_" + randomHex(16)
	hash := sha256.Sum256([]byte(keyID)) // stands in for the hash of a secret
	if _, err := tx.ExecContext(ctx, `INSERT INTO keystore_keys
		(id, workspace_id, key_space_id, hash, start, identity_id, enabled, created_at, updated_at)
		VALUES (?, ?, 'ks_demo', ?, 'naive', ?, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))`,
		keyID, workspaceID, hash[:], identityID); err != nil {
		return err
	}
	return tx.Commit()
}

// summarize counts the failed calls and describes their errors: how many
// of each MySQL error number, and the first message.
func summarize(errs []error) (failed int, description string) {
	byNumber := map[string]int{}
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if failed++; first == nil {
			first = err
		}
		var me *mysql.MySQLError
		if errors.As(err, &me) {
			byNumber[fmt.Sprintf("MySQL %d", me.Number)]++
		} else {
			byNumber["not a server error"]++
		}
	}
	if failed == 0 {
		return 0, ""
	}
	var parts []string
	for number, count := range byNumber {
		parts = append(parts, fmt.Sprintf("%s ×%d", number, count))
	}
	sort.Strings(parts)
	return failed, fmt.Sprintf(" (%s)\n  e.g. %v", strings.Join(parts, ", "), first)
}

// race runs call(0), ..., call(n-1) in n goroutines that all wait on one
// channel, so that the calls start together. It returns their errors and the
// time from the release until the last call returned.
func race(n int, call func(i int) error) ([]error, time.Duration) {
	errs := make([]error, n)
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			errs[i] = call(i)
		}()
	}
	ready.Wait()
	start := time.Now()
	close(release)
	done.Wait()
	return errs, time.Since(start)
}

// startServer starts a throwaway MariaDB (see internal/mariadb).
func startServer(ctx context.Context) (*mariadb.Server, error) {
	t0 := time.Now()
	server, err := mariadb.Start(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting a throwaway MariaDB: %w", err)
	}
	fmt.Printf("started throwaway MariaDB %s at %s (pid %d) in %v\n",
		server.Version(), server.Addr(), server.Pid(), time.Since(t0).Round(10*time.Millisecond))
	return server, nil
}

func stopServer(server *mariadb.Server) {
	pid := server.Pid()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "race: stopping MariaDB:", err)
		return
	}
	fmt.Printf("stopped throwaway MariaDB (pid %d)\n", pid)
}

// openDB opens a pool of poolSize connections on dsn's database, creating
// keystore_demo and using it when dsn names none.
func openDB(ctx context.Context, dsn string, poolSize int) (*sqlx.DB, error) {
	db, cfg, err := demodb.Open(ctx, dsn, "keystore_demo")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(poolSize) // well below max_connections (151 by default)
	db.SetMaxIdleConns(poolSize)

	// Open every connection now, so that the races measure the database
	// rather than connection setup.
	conns := make([]*sql.Conn, 0, poolSize)
	defer func() {
		for _, c := range conns {
			c.Close() // back to the pool
		}
	}()
	for range poolSize {
		c, err := db.Conn(ctx)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("connecting to %s: %w", cfg.Addr, err)
		}
		conns = append(conns, c)
	}
	fmt.Printf("using database %s at %s, %d connections\n", cfg.DBName, cfg.Addr, poolSize)
	return db, nil
}

func countRows(ctx context.Context, db *sqlx.DB, query string, args ...any) (int, error) {
	var n int
	err := db.GetContext(ctx, &n, query, args...)
	return n, err
}

func describeRatelimits(rls []keystore.Ratelimit) []string {
	var out []string
	for _, rl := range rls {
		out = append(out, fmt.Sprintf("%s %d/%v", rl.Name, rl.Limit, rl.Duration))
	}
	return out
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return hex.EncodeToString(b)
}
