// Package testutil holds helpers shared by the tests of several packages.
package testutil

import (
	"fmt"
	"sync"
	"testing"

	"github.com/jmoiron/sqlx"
)

// Parallel runs f(i) for i in [0, n) in n goroutines released together and
// returns the errors they returned, each naming its goroutine.
func Parallel(n int, f func(i int) error) []error {
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = f(i)
		}()
	}
	close(start)
	wg.Wait()
	var failed []error
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Errorf("goroutine %d: %w", i, err))
		}
	}
	return failed
}

// FailOnErrors fails the test with the first five of errs, if any.
func FailOnErrors(t testing.TB, errs []error) {
	t.Helper()
	for i, err := range errs {
		if i == 5 {
			t.Errorf("... and %d more", len(errs)-5)
			break
		}
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
}

// Count runs a query that returns one number, such as SELECT COUNT(*), and
// fails the test if it cannot.
func Count(t testing.TB, db *sqlx.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Get(&n, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
