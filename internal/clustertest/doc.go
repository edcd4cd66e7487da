// Package clustertest holds the tests of keystore on more than one server:
// a primary with a lagging read replica, and a three-node Galera cluster,
// all started on loopback by internal/mariadb. It has no code of its own;
// run it with `make test-cluster` (`make test` runs it too).
package clustertest
