// Command apiserver is an HTTP API guarded by keystore keys, with
// keystorehttp: a route that creates keys, and a route of orders that
// spends credits and ratelimits.
//
//	go run ./examples/apiserver                          # throwaway MariaDB; calls itself and prints each answer
//	go run ./examples/apiserver -listen 127.0.0.1:8080   # then keeps serving, for curl
//	KEYSTORE_DSN='root@tcp(127.0.0.1:3306)/' go run ./examples/apiserver
//
// With no database in the DSN it creates and uses keystore_apiserver. It
// exits with status 1 if any answer is not the one it expects.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/demodb"
	"github.com/idsafe/keystore/internal/mariadb"
)

func main() {
	listen := flag.String("listen", "", "after the demo, keep serving on this address (e.g. 127.0.0.1:8080) until interrupted")
	dsn := flag.String("dsn", "", "go-sql-driver/mysql DSN of the server to use\n(default $KEYSTORE_DSN; if both are empty, a throwaway MariaDB is started)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cmp.Or(*dsn, os.Getenv("KEYSTORE_DSN")), *listen, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "apiserver:", err)
		os.Exit(1)
	}
}

// run serves the API on a loopback port, creates keys through it, sends
// the requests of the demo and checks each answer; with listen set it then
// serves there until ctx ends.
func run(ctx context.Context, dsn, listen string, out io.Writer) error {
	if dsn == "" {
		server, err := mariadb.Start(ctx)
		if err != nil {
			return fmt.Errorf("starting a throwaway MariaDB: %w", err)
		}
		defer server.Stop()
		fmt.Fprintf(out, "started throwaway MariaDB %s at %s\n", server.Version(), server.Addr())
		dsn = server.DSN("")
	}
	db, _, err := demodb.Open(ctx, dsn, "keystore_apiserver")
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := keystore.New(db)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	// The admin key, which may create keys: made here for this run only
	// (it expires in an hour and is deleted when run returns); a real
	// service makes its admin keys with an operator's tool.
	expires := time.Now().Add(time.Hour)
	admin, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
		WorkspaceID: workspace, KeySpaceID: keySpace, Prefix: "admin", Name: "apiserver admin",
		Permissions: []string{"keys.create"}, Expires: &expires,
	})
	if err != nil {
		return err
	}
	defer store.DeleteKey(context.WithoutCancel(ctx), workspace, admin.KeyID)

	addr := cmp.Or(listen, "127.0.0.1:0")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: newAPI(store), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "serving on %s\n\n", base)

	if err := demo(ctx, out, base, admin.Key); err != nil {
		return err
	}
	if listen == "" {
		return nil
	}
	// The admin key is shown once, as CreateKey returns it once (the
	// store keeps only its hash), and only to whoever asked to serve.
	fmt.Fprintf(out, "\nserving until interrupted; this run's admin key, shown once, is\n  ADMIN_KEY=%s\n", admin.Key)
	fmt.Fprintf(out, "  curl -X POST -H \"Authorization: Bearer $ADMIN_KEY\" -d '{\"externalId\":\"me\",\"permissions\":[\"orders.read\"]}' %s/v1/keys\n", base)
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	case err := <-served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
