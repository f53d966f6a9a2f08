# Sourced by the project's scripts: where the local services are. Override any of these
# in the environment to point at other servers. TANSU_PORT (scripts/tansu.sh) moves the
# local broker; the default broker address follows it.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export SPENDGUARD_BROKERS="${SPENDGUARD_BROKERS:-127.0.0.1:${TANSU_PORT:-9092}}"
export SPENDGUARD_POLICIES="${SPENDGUARD_POLICIES:-policies}"
