package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystorehttp"
)

const (
	workspace = "ws_demo"
	keySpace  = "ks_demo"
)

// newAPI returns the API's routes, each guarded by the middleware its
// permissions and cost call for.
func newAPI(store *keystore.Store) http.Handler {
	require := func(permissions string, cost int64) func(http.Handler) http.Handler {
		return keystorehttp.Require(store, keystore.VerifyKeyRequest{
			WorkspaceID: workspace, KeySpaceID: keySpace, Permissions: permissions, Cost: cost,
		})
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/keys", require("keys.create", 0)(createKey(store)))
	mux.Handle("GET /v1/orders", require("orders.read", 1)(http.HandlerFunc(listOrders)))
	return mux
}

// newKey is the body of POST /v1/keys.
type newKey struct {
	ExternalID      string   `json:"externalId"`
	Permissions     []string `json:"permissions"`     // of grantable only
	Credits         *int64   `json:"credits"`         // omitted: unlimited
	RequestsPerHour int64    `json:"requestsPerHour"` // 0: no ratelimit
}

// grantable are the permissions POST /v1/keys may give: never
// keys.create, so that a key made here cannot make keys of its own.
var grantable = []string{"orders.read", "orders.write"}

// createKey creates a key for the customer the body names; concurrent
// calls for a new customer all succeed and create one identity.
func createKey(store *keystore.Store) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body newKey
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
			return
		}
		for _, p := range body.Permissions {
			if !slices.Contains(grantable, p) {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "permissions: " + p + " is not one of " + strings.Join(grantable, ", ")})
				return
			}
		}
		req := keystore.CreateKeyRequest{
			WorkspaceID: workspace, KeySpaceID: keySpace, Prefix: "sk",
			ExternalID: body.ExternalID, Permissions: body.Permissions,
		}
		if body.Credits != nil {
			req.Credits = &keystore.Credits{Remaining: *body.Credits}
		}
		if body.RequestsPerHour > 0 {
			req.Ratelimits = []keystore.Ratelimit{{Name: "requests", Limit: body.RequestsPerHour, Duration: time.Hour, AutoApply: true}}
		}
		k, err := store.CreateKey(r.Context(), req)
		var invalid *keystore.ValidationError
		switch {
		case errors.As(err, &invalid):
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": invalid.Field + ": " + invalid.Reason})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the key could not be created"})
		default:
			writeJSON(w, http.StatusCreated, map[string]string{"keyId": k.KeyID, "key": k.Key, "identityId": k.IdentityID})
		}
	}
}

// listOrders answers with the caller's orders: the verification in the
// context says whose they are.
func listOrders(w http.ResponseWriter, r *http.Request) {
	v, ok := keystorehttp.FromContext(r.Context())
	if !ok { // mounted without Require: a bug, and no one to serve
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "no verified key"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"owner": v.ExternalID, "orders": []string{}, "creditsLeft": v.Remaining})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}
