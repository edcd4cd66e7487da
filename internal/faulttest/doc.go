// Package faulttest is the keystore fault suite: it breaks the network
// between a Store and MariaDB with an embedded toxiproxy, kills the server,
// and cancels contexts, then checks on the server itself that nothing was
// duplicated or half-written, that every error was classified, and that
// while the server was up no call was left "maybe committed": every lost
// commit was settled (see settle.go in the library).
//
// It is a separate module so that toxiproxy and goleak never enter the
// library's dependency graph. Run it with
//
//	cd internal/faulttest && go test -race ./...
//
// (make test does). It starts its own throwaway MariaDB servers, or uses
// KEYSTORE_TEST_DSN for everything except the crash test.
package faulttest
