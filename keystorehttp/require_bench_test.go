package keystorehttp_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystorehttp"
	"github.com/idsafe/keystore/keystoretest"
)

// BenchmarkRequire compares a verification through the middleware with
// the same VerifyKey called directly, on a Store that answers from memory,
// so that what differs is the middleware's own cost (reading the header,
// the context value, the handler call), not the database's.
//
//	go test -run '^$' -bench Require -count 5 ./keystorehttp
func BenchmarkRequire(b *testing.B) {
	store := keystoretest.NewStore(b, keystore.WithVerifyCache(1000, time.Second))
	k, err := store.CreateKey(context.Background(), keystore.CreateKeyRequest{WorkspaceID: workspace, KeySpaceID: keySpace, Permissions: []string{"orders.read"}})
	if err != nil {
		b.Fatal(err)
	}
	route := keystore.VerifyKeyRequest{WorkspaceID: workspace, KeySpaceID: keySpace, Permissions: "orders.read"}
	b.Run("shape=VerifyKey", func(b *testing.B) {
		req := route
		req.Key = k.Key
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if v, err := store.VerifyKey(context.Background(), req); err != nil || !v.Valid {
					b.Fatalf("%v %v", v.Code, err)
				}
			}
		})
	})
	b.Run("shape=Require", func(b *testing.B) {
		h := keystorehttp.Require(store, route)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := keystorehttp.FromContext(r.Context()); !ok {
				w.WriteHeader(http.StatusInternalServerError)
			}
		}))
		b.RunParallel(func(pb *testing.PB) {
			r := httptest.NewRequest(http.MethodGet, "/orders", nil)
			r.Header.Set("Authorization", "Bearer "+k.Key)
			for pb.Next() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	})
}
