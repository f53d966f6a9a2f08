#!/usr/bin/env bash
# The whole product in one command: brings up PostgreSQL and tansu, starts
# `spendguard serve` with the example policies, publishes examples/intents.jsonl and
# prints the decisions. Each run uses a fresh demo database and fresh topics.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up
# shellcheck disable=SC1091
source scripts/env.sh

cargo build --quiet
bin=target/debug/spendguard
run_id=$(date +%s)
server=${DATABASE_URL%/*}
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS spendguard_demo" -qc "CREATE DATABASE spendguard_demo" >/dev/null
export DATABASE_URL="$server/spendguard_demo"
export SPENDGUARD_TOPIC_PREFIX="demo$run_id."
export SPENDGUARD_POLICIES="${SPENDGUARD_POLICIES:-policies}"
log=target/demo-serve.log

"$bin" serve --instance demo >"$log" 2>&1 &
serve_pid=$!
trap 'kill -TERM $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  grep -q "ready" "$log" && break
  kill -0 $serve_pid 2>/dev/null || { echo "serve exited:"; cat "$log"; exit 1; }
  sleep 0.5
done

count=$(grep -cv '^[[:space:]]*$' examples/intents.jsonl)
"$bin" intents publish --input examples/intents.jsonl
echo "--- decisions (serve log: $log) ---"
"$bin" decisions tail --from-beginning --count "$count" --idle-timeout 20
echo "--- dead letters: malformed input goes to ${SPENDGUARD_TOPIC_PREFIX}spend.dlq ---"
