#!/usr/bin/env bash
# Makes sure the local PostgreSQL the project uses is installed (Debian packages),
# running, and has the project's databases and roles. Idempotent; fast when all is fine.
#
#   scripts/postgres.sh          # ensure everything, then print DATABASE_URL
#
# Settings (environment): PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres).
set -euo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
DATABASES=(test spendguard)
READY_WAIT_S=30

psql_admin() { psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"; }

ready() { pg_isready -h "$PGHOST" -p "$PGPORT" -q 2>/dev/null; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "postgres.sh: need root to run: $*" >&2; exit 1
    fi
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    echo "postgres.sh: installing PostgreSQL from Debian packages" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

if ! ready; then
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    if [ -z "$version" ]; then
        echo "postgres.sh: no cluster under /etc/postgresql; create one with pg_createcluster" >&2
        exit 1
    fi
    conf="/etc/postgresql/$version/main"
    # Local development and tests: trust on loopback (never use this in production).
    if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$conf/pg_hba.conf"; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
        as_root sed -i '1i local all all trust' "$conf/pg_hba.conf"
    fi
    echo "postgres.sh: starting cluster $version/main" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 "$READY_WAIT_S"); do ready && break; sleep 1; done
    ready || { echo "postgres.sh: PostgreSQL did not become ready on $PGHOST:$PGPORT" >&2; exit 1; }
fi

for db in "${DATABASES[@]}"; do
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
        psql_admin -c "CREATE DATABASE $db" || true
    fi
done
# The role the service runs as (migrations grant it what it needs, table by table).
psql_admin -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'spendguard_service') THEN CREATE ROLE spendguard_service LOGIN; END IF; END \$\$;"

echo "postgres://$PGUSER@$PGHOST:$PGPORT/spendguard"
