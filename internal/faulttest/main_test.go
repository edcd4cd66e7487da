package faulttest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/idsafe/keystore/keystoretest"
	"go.uber.org/goleak"
)

// TestMain starts the MariaDB server the tests share (unless
// KEYSTORE_TEST_DSN names one), runs the tests, stops the server, and then
// fails the run if any goroutine is left over.
//
// keystoretest.Main cannot be used: it exits before a leak check could run.
// So this package starts the server itself and hands it to keystoretest
// through KEYSTORE_TEST_DSN.
//
// What legitimately outlives the tests is recorded before they start and
// ignored by goroutine identity, not by function name, so that a pool or
// proxy a test forgets to close is still reported:
//   - the goroutine internal/mariadb forks servers from (it never returns);
//   - keystoretest's admin pool (database/sql's connection opener, and the
//     driver's watcher of its one connection), which the package never
//     closes without Main. The pool is warmed up here so that its single
//     connection exists before the snapshot; the tests never run in
//     parallel, so it never needs a second one.
//
// One kind is ignored by function: toxiproxy's no-op stage of a link that
// was cut while a "timeout" toxic was being removed stays blocked sending to
// the removed stage forever (toxiproxy v2.5.0, link.go/toxic.go). It is the
// proxy's own goroutine, holds no connection, and is seen after most runs of
// the reset test.
func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var server *mariadb.Server
	if os.Getenv(keystoretest.EnvDSN) == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var err error
		server, err = mariadb.Start(ctx)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "faulttest:", err)
			return 1
		}
		os.Setenv(keystoretest.EnvDSN, server.DSN(""))
	}
	stop := func() {
		if server != nil {
			if err := server.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "faulttest:", err)
			}
			server = nil
		}
	}
	defer stop()

	if err := warmHarness(); err != nil {
		fmt.Fprintln(os.Stderr, "faulttest:", err)
		return 1
	}
	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"),
	}

	code := m.Run()
	stop()
	if code != 0 {
		return code // the failures say more than a leak report would
	}
	if err := goleak.Find(ignore...); err != nil {
		fmt.Fprintln(os.Stderr, "faulttest: goroutines left over after the tests:", err)
		return 1
	}
	return 0
}

// warmHarness makes keystoretest set up and open its admin connection (by
// creating and dropping one database) before the goroutine snapshot.
func warmHarness() (err error) {
	tb := &mainTB{}
	defer func() {
		if r := recover(); r != nil {
			if r != errMainTBFailed {
				panic(r)
			}
			err = fmt.Errorf("keystoretest: %s", tb.msg)
		}
		for i := len(tb.cleanups) - 1; i >= 0; i-- {
			tb.cleanups[i]()
		}
		if err == nil && tb.msg != "" {
			err = fmt.Errorf("keystoretest: %s", tb.msg)
		}
	}()
	keystoretest.DSN(tb)
	return nil
}

// mainTB is the testing.TB that warmHarness hands keystoretest outside any
// test. It implements only what keystoretest calls; Fatal aborts by panic.
type mainTB struct {
	testing.TB // nil: any other method panics
	msg        string
	cleanups   []func()
}

var errMainTBFailed = fmt.Errorf("mainTB failed")

func (tb *mainTB) Helper()                   {}
func (tb *mainTB) Cleanup(f func())          { tb.cleanups = append(tb.cleanups, f) }
func (tb *mainTB) Errorf(f string, a ...any) { tb.msg += fmt.Sprintf(f, a...) + "; " }
func (tb *mainTB) Fatalf(f string, a ...any) { tb.Errorf(f, a...); panic(errMainTBFailed) }
func (tb *mainTB) Fatal(a ...any)            { tb.msg += fmt.Sprint(a...) + "; "; panic(errMainTBFailed) }
