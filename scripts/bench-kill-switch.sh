#!/usr/bin/env bash
# Kill-switch propagation bench (issue 4, SPEC §10 target p99 <= 50 ms, reported, not
# asserted): starts N `serve` instances in one consumer group, trips and clears a
# scope ROUNDS times through `spendguard kill-switch`, and reads from every instance's
# log how long each control message took from the CLI's publish (`sentAt`) to being
# applied (`propagation_ms=`). Prints p50 / p95 / p99 / max over all instances.
#
#   scripts/bench-kill-switch.sh [--release] [--instances 3] [--rounds 100]
#
# Uses a fresh database and fresh topics on the servers of scripts/env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
instances=3
rounds=100
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --instances) instances="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

scripts/services.sh up
# shellcheck disable=SC1091
source scripts/env.sh
if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
bin=${CARGO_TARGET_DIR:-target}/$profile/spendguard

run_id=$(date +%s)
server=${DATABASE_URL%/*}
db=spendguard_ksbench
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -qc "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="$server/$db"
export SPENDGUARD_TOPIC_PREFIX="ksbench$run_id."
export SPENDGUARD_GROUP_ID="ksbench$run_id"
export SPENDGUARD_LOG=warn
dir=target/ksbench
rm -rf "$dir" && mkdir -p "$dir"
# serve refuses to start without a key-encryption key (SPEC §14): a fresh one per run,
# like the scratch database it protects.
"$bin" privacy kek-gen --out "$dir/bench.kek" >/dev/null
export SPENDGUARD_KEK_FILE="$PWD/$dir/bench.kek"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
for i in $(seq "$instances"); do
  "$bin" serve --demo --instance "ks-$i" >"$dir/ks-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq "$instances"); do
  for _ in $(seq 240); do
    grep -q "spendguard serve: instance .* ready" "$dir/ks-$i.log" && break
    sleep 0.5
  done
  grep -q "spendguard serve: instance .* ready" "$dir/ks-$i.log" || { echo "instance ks-$i not ready:"; cat "$dir/ks-$i.log"; exit 1; }
done

for r in $(seq "$rounds"); do
  "$bin" kill-switch on --scope agent:ksbench --reason "bench round $r" >/dev/null
  "$bin" kill-switch off --scope agent:ksbench --reason "bench round $r" >/dev/null
done
# Let the last messages arrive.
sleep 2

expected=$((rounds * 2 * instances))
grep -ho "propagation_ms=[0-9.]*" "$dir"/ks-*.log | cut -d= -f2 | sort -n >"$dir/all.txt"
n=$(wc -l <"$dir/all.txt")
pick() { awk -v q="$1" -v n="$n" 'NR == (int(q * n) < 1 ? 1 : (int(q * n + 0.999999) > n ? n : int(q * n + 0.999999))) { print; exit }' "$dir/all.txt"; }
echo "kill-switch propagation: $instances instances x $((rounds * 2)) changes, $n of $expected applications seen"
echo "p50_ms=$(pick 0.50) p95_ms=$(pick 0.95) p99_ms=$(pick 0.99) max_ms=$(tail -1 "$dir/all.txt")"
if [ "$n" -ne "$expected" ]; then
  echo "MISSING: $((expected - n)) applications not seen in the logs ($dir)" >&2
  exit 1
fi
