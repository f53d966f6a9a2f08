#!/usr/bin/env bash
# Alternates `replay --verify` of one kept ledger between builds and prints one row per
# run: wall, events/s, the events and compare phases, client CPU, peak RSS, and whether
# the replay reproduced the ledger exactly (ok=1). Runs back to back are the only fair
# comparison on a shared host (docs/benchmarks.md).
#
#   scripts/bench-replay-ab.sh --database-url URL [--pairs N] BIN...
#
# Make the ledger once with `spendguard ledger bench ... --keep-database` (it prints the
# URL) and `psql URL -c ANALYZE`.
set -euo pipefail
url="" pairs=3 bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --pairs) pairs="$2"; shift 2 ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) bins+=("$1"); shift ;;
    esac
done
if [ -z "$url" ] || [ ${#bins[@]} -eq 0 ]; then
    echo "usage: $0 --database-url URL [--pairs N] BIN..." >&2
    exit 2
fi
events=$(psql "$url" -Atc "SELECT count(*) FROM ledger_event")
for i in $(seq 1 "$pairs"); do
    for b in "${bins[@]}"; do
        out=$(SPENDGUARD_LOG=spendguard=debug /usr/bin/time -f "TIME %e %U %S %M" \
            "$b" replay --verify --database-url "$url" 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
        applied=$(echo "$out" | grep -o 'chains checked events=[0-9]* elapsed_ms=[0-9]*' | grep -o '[0-9]*$' || true)
        compared=$(echo "$out" | grep -o 'live tables compared elapsed_ms=[0-9]*' | grep -o '[0-9]*$' || true)
        ok=$(echo "$out" | grep -c ' 0 did not reproduce.* 0 projection difference(s), 0 chain' || true)
        read -r _ wall user sys kb <<< "$(echo "$out" | grep '^TIME')"
        printf "%-24s run %d  wall %6.2f s = %7.0f events/s  events phase %5s ms  compare %5s ms  cpu %5.2f + %4.2f s  peak RSS %s KB  ok=%s  load %s\n" \
            "$(basename "$b")" "$i" "$wall" "$(awk -v e="$events" -v w="$wall" 'BEGIN { print e / w }')" "${applied:-?}" "${compared:-?}" \
            "$user" "$sys" "$kb" "$ok" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done
