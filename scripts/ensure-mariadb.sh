#!/usr/bin/env bash
# Makes sure the tests can start a throwaway MariaDB server (internal/mariadb):
# installs Debian's mariadb-server when mariadbd is missing. Does nothing when
# KEYSTORE_TEST_DSN names a server to use instead.
set -euo pipefail

if [[ -n "${KEYSTORE_TEST_DSN:-}" ]]; then
	exit 0
fi

have() {
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/usr/bin/$1" ]]
}
if { have mariadbd || have mysqld; } && { have mariadb-install-db || have mysql_install_db; }; then
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-mariadb: installing the Debian package mariadb-server" >&2
	# Keep the package from starting its own service (port 3306): the tests
	# start their own servers. A policy-rc.d that exits 101 forbids starts.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
	if have mariadbd || have mysqld; then
		exit 0
	fi
	echo "ensure-mariadb: mariadb-server installed but mariadbd not found" >&2
	exit 1
fi

cat >&2 <<'MSG'
ensure-mariadb: MariaDB is not installed and cannot be installed from here
(needs root and apt-get). Install the Debian package `mariadb-server`
(`apt-get install -y mariadb-server`), or set KEYSTORE_TEST_DSN to the DSN of
a MariaDB/MySQL user allowed to CREATE and DROP DATABASE, e.g.
  KEYSTORE_TEST_DSN='root:secret@tcp(127.0.0.1:3306)/'
MSG
exit 1
