#!/usr/bin/env bash
# Runs the library's tests through a real Vitess vtgate: vttestserver (one
# unsharded keyspace; vtcombo, with vtgate and the tablets in one process)
# over MySQL from the Debian sid chroot that test-mysql.sh uses
# ($KEYSTORE_MYSQL_CHROOT, default /var/cache/keystore/mysql-sid; built or
# completed here, plus mysql-client-core, whose mysqladmin vttestserver needs
# to stop mysqld).
#
# Vitess is built once from the vitess.io/vitess Go module, in a writable
# copy of it (its go.mod has an exclude directive, which go install refuses),
# never through this module's go.mod: binaries, config and Go caches go to
# $KEYSTORE_VITESS_CACHE (default /var/cache/keystore/vitess; about 5.5
# minutes on 2 cores, 2 GB). The binaries are static (CGO_ENABLED=0, as
# Vitess's own Makefile builds them), so they run in the chroot.
#
# vttestserver runs in the chroot as an unprivileged user (mysqlctl refuses
# root), everything bound to 127.0.0.1; the tests that honour
# KEYSTORE_TEST_DSN (the root package and keystoretest) run against vtgate's
# MySQL port, without the race detector (vtgate makes them about 5 times
# slower; make test and make test-mysql run them with it). Arguments are
# passed to go test, e.g. -run TestCreateKey -v.
#
# Exit status: 0 passed; 1 a test failed; 3 there was no Vitess to test
# against (not root, no network or module proxy, sid's packages or Vitess's
# build not to be had today, vttestserver did not start): .ci/run reports
# that and goes on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

root=${KEYSTORE_MYSQL_CHROOT:-/var/cache/keystore/mysql-sid}
cache=${KEYSTORE_VITESS_CACHE:-/var/cache/keystore/vitess}
version=v0.24.4
vtroot=$cache/$version # bin/ and config/, what vttestserver wants in $VTROOT
user=keystore-vitess   # the unprivileged user in the chroot
keyspace=keystore

no_vitess() {
	echo "test-vitess: no Vitess to test against: $*" >&2
	exit 3
}
secs() { echo $((SECONDS - $1))s; }

[[ "$(id -u)" -eq 0 ]] || no_vitess "this needs root (debootstrap, chroot); or run 'go test . ./keystoretest/' with KEYSTORE_TEST_DSN naming a vtgate"

. scripts/sid-chroot.sh
sid_chroot "$root" no_vitess mysql-server-core mysql-client-core

# Build vttestserver, vtcombo and mysqlctl once.
if [[ ! -f "$vtroot/.keystore-ready" ]]; then
	t=$SECONDS
	echo "test-vitess: building Vitess $version into $vtroot (about 5 minutes, once)"
	mkdir -p "$cache"
	# Vitess's own module and build caches, apart from this module's.
	vtgo() { GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOFLAGS=-modcacherw CGO_ENABLED=0 go "$@"; }
	dir=$(cd "$cache" && vtgo mod download -json "vitess.io/vitess@$version" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
	[[ -n "$dir" && -d "$dir" ]] || no_vitess "could not download vitess.io/vitess@$version from the Go module proxy"
	src=$cache/src-$version
	rm -rf "$src" "$vtroot"
	cp -r "$dir" "$src"
	chmod -R u+w "$src"
	mkdir -p "$vtroot/bin"
	(cd "$src" && vtgo build -trimpath -o "$vtroot/bin/" ./go/cmd/vttestserver ./go/cmd/vtcombo ./go/cmd/mysqlctl) \
		>"$cache/build.log" 2>&1 || {
		tail -n 20 "$cache/build.log" >&2
		no_vitess "building Vitess failed, see $cache/build.log"
	}
	cp -r "$src/config" "$vtroot/config"
	# MySQL 9 no longer knows innodb_log_file_size, which Vitess's test
	# settings still set; innodb_redo_log_capacity replaced it.
	sed -i 's/^innodb_log_file_size.*/innodb_redo_log_capacity = 8M/' "$vtroot/config/mycnf/test-suite.cnf"
	rm -rf "$src"
	touch "$vtroot/.keystore-ready"
	echo "test-vitess: built Vitess in $(secs $t)"
fi

chroot "$root" id -u "$user" >/dev/null 2>&1 ||
	chroot "$root" useradd --system --no-create-home --shell /usr/sbin/nologin "$user" ||
	no_vitess "could not add the user $user in $root"
ids=$(chroot "$root" id -u "$user"):$(chroot "$root" id -g "$user") # the chroot's, not the host's

run=$(mktemp -d "$root/tmp/keystore-vitess.XXXXXX")
inside=${run#"$root"}
pid=
cleanup() {
	local p deadline
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		# TERM: vttestserver stops vtcombo and, through mysqlctl, mysqld.
		kill -TERM "$pid" 2>/dev/null || true
		deadline=$((SECONDS + 60))
		while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.5; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	# Anything it started and left behind (vtcombo, mysqld) names this run's
	# directory on its command line; stop those processes by their ids.
	for p in /proc/[0-9]*; do
		[[ "$(readlink "$p/root" 2>/dev/null)" == "$root" ]] || continue
		tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$inside/" || continue
		kill -KILL "${p#/proc/}" 2>/dev/null || true
	done
	rm -rf "$run"
}
trap cleanup EXIT
# Vitess's files inside the chroot: hard links when the cache is on the same
# file system (no copy of 250 MB), else a copy.
cp -al "$vtroot" "$run/vt" 2>/dev/null || cp -a "$vtroot" "$run/vt"
mkdir "$run/data"
printf '[mysqld]\nbind-address = 127.0.0.1\nmysqlx = OFF\n' >"$run/extra.cnf"
chown "$ids" "$run" "$run/data" # vt/ stays root's: readable is enough

# Base port: vtcombo's HTTP port; +1 gRPC, +2 mysqld, +3 vtgate's MySQL
# protocol. A free run of ten ports on loopback, picked at random.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=
for _ in $(seq 50); do
	b=$((20000 + RANDOM % 1000 * 10))
	ok=1
	for i in $(seq 0 9); do port_free $((b + i)) || { ok=0 && break; }; done
	[[ $ok -eq 1 ]] && base=$b && break
done
[[ -n "$base" ]] || no_vitess "no ten free ports on 127.0.0.1"
vtgate=$((base + 3))

log_tail() {
	tail -n 30 "$run/vttestserver.log" >&2 2>/dev/null || true
	tail -n 10 "$run/data/vt_0000000001/error.log" "$run/data"/*/logs/*.ERROR >&2 2>/dev/null || true
}

t=$SECONDS
# chroot execs vttestserver as $user, so $! is vttestserver itself.
chroot --userspec="$user:$user" "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$inside" \
	VTROOT="$inside/vt" VTDATAROOT="$inside/data" TMPDIR="$inside" \
	"$inside/vt/bin/vttestserver" --port "$base" --data-dir "$inside/data" \
	--keyspaces "$keyspace" --num-shards 1 \
	--mysql-bind-host 127.0.0.1 --vtcombo-bind-host 127.0.0.1 --grpc-bind-address 127.0.0.1 \
	--tablet-hostname 127.0.0.1 --extra-my-cnf "$inside/extra.cnf" >"$run/vttestserver.log" 2>&1 &
pid=$!

# Ready when vtgate answers a query that its keyspace's primary tablet must
# serve (a query vtgate answers alone would pass before the tablets do).
ask() {
	chroot "$root" mysql --no-defaults -h 127.0.0.1 -P "$vtgate" -u root -N -B -e "$1" 2>/dev/null
}
answer=
for _ in $(seq 240); do
	kill -0 "$pid" 2>/dev/null || break
	if ask "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '$keyspace'" >/dev/null; then
		answer=$(ask "SELECT VERSION()") && break
	fi
	sleep 0.5
done
[[ -n "$answer" ]] || { log_tail; no_vitess "vttestserver did not start within 2 minutes, see above"; }
echo "test-vitess: vtgate $answer on 127.0.0.1:$vtgate, up in $(secs $t); $(ask "SELECT @@global.version" 2>/dev/null || true)"

t=$SECONDS
status=0
KEYSTORE_TEST_DSN="root@tcp(127.0.0.1:$vtgate)/" go test -count=1 -timeout 40m "$@" . ./keystoretest/ || status=1
echo "test-vitess: tests took $(secs $t)"
exit "$status"
