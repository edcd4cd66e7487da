package keystorehttp_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystorehttp"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

func ExampleRequire() {
	// A Store on a fresh test database; a service opens its own DSN.
	dsn, drop, err := keystoretest.Database()
	if err != nil {
		log.Fatal(err)
	}
	defer drop()
	db, err := sqlx.Open("mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	store, err := keystore.New(db)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	key, err := store.CreateKey(ctx, keystore.CreateKeyRequest{
		WorkspaceID: "ws_acme", KeySpaceID: "ks_live", ExternalID: "customer-42", Permissions: []string{"orders.read"},
	})
	if err != nil {
		log.Fatal(err)
	}

	// One middleware per kind of route: its permissions, cost, ratelimits.
	readOrders := keystorehttp.Require(store, keystore.VerifyKeyRequest{
		WorkspaceID: "ws_acme", KeySpaceID: "ks_live", Permissions: "orders.read",
	})
	mux := http.NewServeMux()
	mux.Handle("GET /orders", readOrders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := keystorehttp.FromContext(r.Context())
		if !ok { // mounted without Require: serve nothing
			http.Error(w, "no verified key", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "orders of %s\n", v.ExternalID)
	})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, authorization := range []string{"Bearer " + key.Key, "Bearer sk_guessed", ""} {
		req, _ := http.NewRequest("GET", srv.URL+"/orders", nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s", resp.StatusCode, body)
	}
	// Output:
	// 200 orders of customer-42
	// 401 {"code":"NOT_FOUND","message":"the API key is not valid"}
	// 401 {"code":"MISSING_KEY","message":"the request carries no API key"}
}
