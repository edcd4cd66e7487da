# Tests, demo and benchmarks run against real MariaDB servers that the code
# starts itself (internal/mariadb); ensure-mariadb.sh installs MariaDB if needed.
# Set KEYSTORE_TEST_DSN to use an existing server instead.

GO ?= go
# bash, for set -o pipefail in bench
SHELL := bash

.PHONY: test test-cluster test-mysql test-vitess demo bench ensure-mariadb

test: ensure-mariadb
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	cd internal/faulttest && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...
	cd internal/migratetest && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...

# The replica and Galera tests alone (make test runs them too): a primary
# with a lagging replica and a three-node Galera cluster on loopback.
test-cluster: ensure-mariadb
	$(GO) vet ./internal/clustertest/ ./internal/mariadb/
	$(GO) test -race -count=1 -timeout 20m -v ./internal/clustertest/

# The library's tests and the demo against MySQL 9 from Debian sid, in a
# chroot built on first use (needs root; see the script).
test-mysql:
	bash scripts/test-mysql.sh

# The root package's and keystoretest's tests through a real Vitess vtgate
# (vttestserver, one unsharded keyspace, over test-mysql's MySQL), Vitess
# built from its Go module on first use (needs root; see the script).
test-vitess:
	bash scripts/test-vitess.sh

demo: ensure-mariadb
	$(GO) run ./examples/race

# Five runs of every benchmark on a durable server, 2,000 calls per shape
# (20,000 for VerifyKey, which is faster), the shapes' order rotated from
# run to run (see docs/benchmarks.md); raw output in bench.txt (for
# benchstat -col /shape), the table of medians and ratios in BENCHMARKS.md,
# bar charts of the medians in docs/charts.
# About 25 minutes.
bench: ensure-mariadb
	$(GO) test -c -o bin/keystore.test .
	set -o pipefail; for i in 0 1 2 3 4; do \
		KEYSTORE_BENCH_ROTATE=$$i KEYSTORE_MARIADB_DURABLE=1 bin/keystore.test -test.run '^$$' \
			-test.bench 'BenchmarkCreateKey|BenchmarkUpdateKeyLink' -test.benchtime 2000x || exit 1; \
		KEYSTORE_BENCH_ROTATE=$$i KEYSTORE_MARIADB_DURABLE=1 bin/keystore.test -test.run '^$$' \
			-test.bench 'BenchmarkVerifyKey' -test.benchtime 20000x || exit 1; done | tee bench.txt
	$(GO) run ./cmd/benchtable < bench.txt > BENCHMARKS.md
	$(GO) run ./cmd/benchtable -json < bench.txt > bench.json
	$(GO) run ./cmd/benchchart -in bench.json -out docs/charts

ensure-mariadb:
	bash scripts/ensure-mariadb.sh
