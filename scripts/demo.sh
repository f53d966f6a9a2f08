#!/usr/bin/env bash
# The whole product in one command: brings up PostgreSQL and tansu, starts
# `spendguard serve` with the example policies, publishes examples/intents.jsonl and
# prints the decisions. Each run uses a fresh demo database and fresh topics.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up
# shellcheck disable=SC1091
source scripts/env.sh

# SPENDGUARD_BIN: an already built binary (the test of this script uses it).
if [ -n "${SPENDGUARD_BIN:-}" ]; then
  bin=$SPENDGUARD_BIN
else
  cargo build --quiet
  bin=target/debug/spendguard
fi
run_id=$(date +%s)
server=${DATABASE_URL%/*}
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS spendguard_demo" -qc "CREATE DATABASE spendguard_demo" >/dev/null
export DATABASE_URL="$server/spendguard_demo"
export SPENDGUARD_TOPIC_PREFIX="demo$run_id."
export SPENDGUARD_POLICIES="${SPENDGUARD_POLICIES:-policies}"
mkdir -p target
log=target/demo-serve.log
# The key-encryption key of the subject keys (SPEC §14): serve refuses to start without
# one. A fresh one per run, like the database it protects; kept outside PostgreSQL.
kek=target/demo.kek
rm -f "$kek"
"$bin" privacy kek-gen --out "$kek" >/dev/null
export SPENDGUARD_KEK_FILE="$kek"
# Seconds without a new message after which the demo stops reading a topic.
IDLE_S=5

# --demo: the example approvers.yaml registers the demo keys of examples/keys/.
"$bin" serve --demo --instance demo >"$log" 2>&1 &
serve_pid=$!
trap 'kill -TERM $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  grep -q "spendguard serve: instance .* ready" "$log" && break
  kill -0 $serve_pid 2>/dev/null || { echo "serve exited:"; cat "$log"; exit 1; }
  sleep 0.5
done

"$bin" intents publish --input examples/intents.jsonl
# Every line gets exactly one answer: a decision, or a dead letter when it is malformed.
echo "--- decisions on ${SPENDGUARD_TOPIC_PREFIX}spend.decisions (serve log: $log) ---"
"$bin" decisions tail --from-beginning --idle-timeout "$IDLE_S"
echo "--- dead letters on ${SPENDGUARD_TOPIC_PREFIX}spend.dlq ---"
"$bin" decisions tail --dead-letters --from-beginning --idle-timeout "$IDLE_S"
