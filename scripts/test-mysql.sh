#!/usr/bin/env bash
# Runs the library's tests and the demo against MySQL. Debian's stable
# releases ship only MariaDB; sid ships MySQL (mysql-server-core, 9.x), so
# this builds a minimal sid chroot once with debootstrap (about a minute and
# 600 MB, in $KEYSTORE_MYSQL_CHROOT, default /var/cache/keystore/mysql-sid),
# starts a throwaway mysqld in it on a Unix socket, and runs the tests that
# honour KEYSTORE_TEST_DSN (the root package and keystoretest) with the race
# detector, then the demo. Needs root, for debootstrap and chroot.
#
# Exit status: 0 passed; 1 a test or the demo failed; 3 there was no MySQL to
# test against (not root, no network, or sid's packages not installable
# today): .ci/run reports that and goes on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

root=${KEYSTORE_MYSQL_CHROOT:-/var/cache/keystore/mysql-sid}

no_mysql() {
	echo "test-mysql: no MySQL to test against: $*" >&2
	exit 3
}

[[ "$(id -u)" -eq 0 ]] || no_mysql "this needs root (debootstrap, chroot); or run 'go test ./...' with KEYSTORE_TEST_DSN naming a MySQL server"

. scripts/sid-chroot.sh
sid_chroot "$root" no_mysql mysql-server-core

run=$(mktemp -d "$root/tmp/keystore-mysql.XXXXXX")
inside=${run#"$root"}
args=(--no-defaults --user=root --datadir="$inside/data" --log-error="$inside/error.log")
pid=
cleanup() {
	if [[ -n "$pid" ]]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$run"
}
trap cleanup EXIT
log_tail() { tail -n 20 "$run/error.log" >&2 2>/dev/null || true; }

chroot "$root" /usr/sbin/mysqld "${args[@]}" --initialize-insecure || { log_tail; no_mysql "mysqld --initialize failed"; }
echo "CREATE DATABASE demo;" >"$run/init.sql"
# chroot execs mysqld, so $! is the server itself, which cleanup stops.
chroot "$root" /usr/sbin/mysqld "${args[@]}" --socket="$inside/mysqld.sock" --pid-file="$inside/mysqld.pid" \
	--init-file="$inside/init.sql" --skip-networking --mysqlx=OFF --skip-log-bin --secure-file-priv= \
	--innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=2 --max-connections=500 &
pid=$!
for _ in $(seq 120); do
	grep -q "ready for connections" "$run/error.log" 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.5
done
grep -q "ready for connections" "$run/error.log" 2>/dev/null || { log_tail; no_mysql "mysqld did not start"; }
echo "test-mysql: $(grep -o "Version: '[^']*'" "$run/error.log" | head -n 1) on $run/mysqld.sock"

socket="$run/mysqld.sock"
KEYSTORE_TEST_DSN="root@unix($socket)/" go test -race -count=1 -timeout 20m . ./keystoretest/ || exit 1
# Again at READ COMMITTED, the level the README recommends on MySQL (at
# REPEATABLE READ a duplicate owner INSERT holds up every new owner).
echo "test-mysql: the root package again, at READ COMMITTED"
KEYSTORE_TEST_DSN="root@unix($socket)/?transaction_isolation=%27READ-COMMITTED%27" \
	go test -race -count=1 -timeout 20m . || exit 1
go run ./examples/race -dsn "root@unix($socket)/demo?parseTime=true&interpolateParams=true" || exit 1
