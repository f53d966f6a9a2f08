#!/usr/bin/env bash
# A/B of spendguard builds end to end (issue 15), for a shared, noisy host: runs
# scripts/bench-loadgen.sh with each binary in turn, alternating, PAIRS rounds, then
# prints one row per run (the latency breakdown's means included) and, per binary, the
# median p50 and p99 over its runs. On these 2-core machines one run of a binary can be
# 2-3x another run of the same binary minutes later (docs/benchmarks.md, fourth session):
# compare medians of alternating runs and the stage means, never two single runs.
#
#   scripts/bench-ab.sh [--pairs 3] NAME=BINARY NAME=BINARY [...] -- [bench-loadgen.sh args]
#
# e.g. scripts/bench-ab.sh --pairs 5 before=/work/sg-before after=target/release/spendguard \
#        -- --no-lifecycle --rate 1000 --duration 10 --agents 2000
# The raw output of every run is kept in target/bench-ab/NAME-N.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

pairs=3
builds=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs="$2"; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *=*) builds+=("$1") ;;
    *) echo "unknown argument: $1 (NAME=BINARY, --pairs N, then -- and bench-loadgen.sh's arguments)" >&2; exit 2 ;;
  esac
  shift
done
if [ "${#builds[@]}" -lt 2 ]; then
  echo "give two builds at least, as NAME=BINARY (see --help)" >&2
  exit 2
fi
for b in "${builds[@]}"; do
  [ -x "${b#*=}" ] || { echo "not an executable: ${b#*=} (for ${b%%=*})" >&2; exit 2; }
done
case "$pairs" in '' | *[!0-9]* | 0) echo "--pairs must be a whole number from 1" >&2; exit 2 ;; esac

out=target/bench-ab
rm -rf "$out" && mkdir -p "$out"
# row NAME FILE: one table row from a bench-loadgen.sh output.
row() {
  awk -v name="$1" '
    /^bench-loadgen:/ { load = $(NF - 2) }
    /^baseline / { base = $7 }
    /^(pipeline|http) / { p50 = $5; p99 = $7; rate = $4 }
    /^  (queued|decide|outbox_wait|produce_ack|write) / { mean[$1] = $3 }
    END {
      printf "| %s | %s | %s | %s | %s / %s | %s | %s | %s | %s | %s |\n", name, load, rate,
        (base == "" ? "-" : base), p50, p99, mean["decide"], mean["write"], mean["queued"],
        mean["outbox_wait"], mean["produce_ack"]
    }' "$2"
}
echo "| build | load | achieved/s | broker p99 ms | p50 / p99 ms | decide | write | queued | outbox_wait | produce_ack |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in $(seq "$pairs"); do
  for b in "${builds[@]}"; do
    name=${b%%=*}
    file="$out/$name-$n.txt"
    scripts/bench-loadgen.sh --bin "${b#*=}" "$@" >"$file" 2>&1 || echo "(run $name-$n exited with $?; see $file)" >&2
    row "$name" "$file" | tee -a "$out/rows.md"
  done
done
echo
echo "medians over the runs of each build (ms):"
for b in "${builds[@]}"; do
  name=${b%%=*}
  awk -F'|' -v name="$name" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { gsub(/ /, "", $2) } $2 == name { split($6, q, "/"); n++; p50[n] = q[1] + 0; p99[n] = q[2] + 0 }
    END { if (n) printf "  %s: p50 %.1f, p99 %.1f (%d runs)\n", name, median(p50, n), median(p99, n), n }' "$out/rows.md"
done
