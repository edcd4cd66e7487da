package keystoretest_test

import (
	"context"
	"fmt"
	"log"
	"testing"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// In a service's tests: a migrated Store on a database of the test's own,
// dropped when the test ends. With keystoretest.Main in TestMain, the
// throwaway server stops when the tests are done.
func ExampleNewStore() {
	testSignup := func(t *testing.T) { // func TestSignup(t *testing.T) in a _test.go file
		store := keystoretest.NewStore(t)
		created, err := store.CreateKey(context.Background(), keystore.CreateKeyRequest{
			WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "new-customer"})
		if err != nil {
			t.Fatal(err)
		}
		_ = created // ... the service's own assertions
	}
	_ = testSignup
}

// Where there is no testing.TB (a TestMain, a runnable example), Database
// creates the database and hands back the function that drops it.
func ExampleDatabase() {
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
	var tables int
	if err := db.Get(&tables, `SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()`); err != nil {
		log.Fatal(err)
	}
	fmt.Println("tables in the new database:", tables)
	// Output:
	// tables in the new database: 0
}
