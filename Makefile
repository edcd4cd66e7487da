# Tests, demo and benchmarks run against real MariaDB servers that the code
# starts itself (internal/mariadb); ensure-mariadb.sh installs MariaDB if needed.
# Set KEYSTORE_TEST_DSN to use an existing server instead.

GO ?= go

.PHONY: test demo bench ensure-mariadb

test: ensure-mariadb
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

demo: ensure-mariadb
	$(GO) run ./examples/race

bench: ensure-mariadb
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

ensure-mariadb:
	bash scripts/ensure-mariadb.sh
