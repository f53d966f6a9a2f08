#!/usr/bin/env bash
# Brings up everything spendguard needs on this machine: PostgreSQL (scripts/postgres.sh)
# and the tansu Kafka-protocol broker (scripts/tansu.sh), then creates the default topics.
#
#   scripts/services.sh up     # install if needed, start, create topics (idempotent)
#   scripts/services.sh down   # stop the broker started by scripts/tansu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/env.sh

# Default topic layout (the same partition counts `spendguard serve` uses by default;
# serve also creates missing topics itself).
TOPICS=(
  "spend.intents:12"
  "spend.decisions:12"
  "spend.approvals:3"
  "spend.settlements:12"
  "spend.control:1"
  "spend.dlq:3"
)

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; else echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; fi
}

create_topics() {
  local existing broker="tcp://${SPENDGUARD_BROKERS%%,*}"
  existing=$("$(tansu_bin)" topic list --broker "$broker" 2>/dev/null || true)
  for entry in "${TOPICS[@]}"; do
    local name=${entry%%:*} partitions=${entry##*:}
    if grep -q "\"$name\"\|\b$name\b" <<<"$existing"; then continue; fi
    "$(tansu_bin)" topic create "$name" --partitions "$partitions" --broker "$broker" >/dev/null 2>&1 ||
      echo "note: could not create topic $name (it may exist already)" >&2
  done
}

case "${1:-up}" in
  up)
    if [ -x scripts/postgres.sh ]; then
      scripts/postgres.sh
    else
      echo "scripts/postgres.sh not present: assuming PostgreSQL is managed elsewhere ($DATABASE_URL)" >&2
    fi
    scripts/tansu.sh start
    create_topics
    ;;
  down)
    scripts/tansu.sh stop
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
