#!/usr/bin/env bash
# Makes sure the tests can start throwaway MariaDB servers (internal/mariadb):
# installs Debian's mariadb-server when mariadbd is missing, and galera-4 and
# rsync (for the Galera cluster tests) when they are. Does nothing when
# KEYSTORE_TEST_DSN names a server to use instead.
#
# Without root or apt-get, a missing MariaDB is an error; missing Galera
# packages only a warning, since only the Galera tests need them (they fail,
# naming the missing package).
set -euo pipefail

if [[ -n "${KEYSTORE_TEST_DSN:-}" ]]; then
	exit 0
fi

have() {
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/usr/bin/$1" ]]
}
have_mariadb() {
	{ have mariadbd || have mysqld; } && { have mariadb-install-db || have mysql_install_db; }
}
# The places internal/mariadb looks for the Galera library (galera.go).
have_galera() {
	local lib
	for lib in /usr/lib/galera/libgalera_smm.so /usr/lib/galera-4/libgalera_smm.so \
		/usr/lib64/galera-4/libgalera_smm.so /usr/lib64/galera/libgalera_smm.so; do
		[[ -f "$lib" ]] && return 0
	done
	return 1
}

missing=()
have_mariadb || missing+=(mariadb-server)
have_galera || missing+=(galera-4)
have rsync || missing+=(rsync)
if [[ ${#missing[@]} -eq 0 ]]; then
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-mariadb: installing the Debian packages ${missing[*]}" >&2
	# Keep the package from starting its own service (port 3306): the tests
	# start their own servers. A policy-rc.d that exits 101 forbids starts.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	if ! have_mariadb; then
		echo "ensure-mariadb: mariadb-server installed but mariadbd not found" >&2
		exit 1
	fi
	if ! have_galera || ! have rsync; then
		echo "ensure-mariadb: warning: galera-4 or rsync installed but not found; the Galera tests will fail" >&2
	fi
	exit 0
fi

if have_mariadb; then
	cat >&2 <<MSG
ensure-mariadb: warning: missing Debian packages (${missing[*]}) that
cannot be installed from here (needs root and apt-get). The demo runs; the
Galera cluster tests will fail until you run: apt-get install -y ${missing[*]}
MSG
	exit 0
fi

cat >&2 <<'MSG'
ensure-mariadb: MariaDB is not installed and cannot be installed from here
(needs root and apt-get). Install the Debian packages `mariadb-server`,
`galera-4` and `rsync` (`apt-get install -y mariadb-server galera-4 rsync`),
or set KEYSTORE_TEST_DSN to the DSN of a MariaDB/MySQL user allowed to CREATE
and DROP DATABASE, e.g.
  KEYSTORE_TEST_DSN='root:secret@tcp(127.0.0.1:3306)/'
MSG
exit 1
