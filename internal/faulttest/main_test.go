package faulttest

import (
	"fmt"
	"os"
	"testing"

	"github.com/idsafe/keystore/keystoretest"
	"go.uber.org/goleak"
)

// TestMain runs the tests with keystoretest's server, which keystoretest.Run
// stops afterwards, and then fails the run if any goroutine is left over.
// Two kinds outlive the tests by design and are ignored:
//   - the goroutine internal/mariadb forks servers from, which never returns
//     (see startFromLockedThread);
//   - toxiproxy's no-op stage of a link that was cut while a "timeout" toxic
//     was being removed: it stays blocked sending to the removed stage
//     forever (toxiproxy v2.5.0, link.go/toxic.go). It is the proxy's own
//     goroutine, holds no connection, and is seen after most runs of the
//     reset test.
func TestMain(m *testing.M) {
	code := keystoretest.Run(m)
	if code == 0 {
		if err := goleak.Find(
			goleak.IgnoreAnyFunction("github.com/idsafe/keystore/internal/mariadb.startFromLockedThread.func1.1"),
			goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "faulttest: goroutines left over after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}
