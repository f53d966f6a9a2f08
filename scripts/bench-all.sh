#!/usr/bin/env bash
# Every benchmark docs/benchmarks.md quotes, from one command (issue 15 item 6): a
# release build, the evaluator (criterion), the ledger's decide bench with each feature
# that costs a decision (limits, entity scope, shadow evaluation) and the replay that
# follows each, the end-to-end pipeline against the bare broker, and the synchronous
# HTTP API. Prints one summary table at the end; every raw output is kept in
# target/bench-all/<time>/ next to the table. Numbers are reported, never asserted.
#
#   scripts/bench-all.sh [--quick] [--skip-build] [--only criterion,ledger,pipeline,http,sweep]
#
# sweep: the highest sustained rate of the bare broker and of the pipeline (default
# layout, no lifecycle mix), from 1,000/s up in steps of 1,000 until neither sustains
# (SPEC §10: the pipeline's ≥ 75 % of the broker's).
# --quick divides sizes and durations (a smoke run of the script, not numbers to quote).
# Needs PostgreSQL (scripts/services.sh up); the pipeline runs start their own tansu
# (scripts/bench-loadgen.sh). Takes about 20 minutes on 2 cores (--quick: about 5).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
build=1
only="criterion,ledger,pipeline,http,sweep"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --skip-build) build="" ;;
    --only) only="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# shellcheck disable=SC1091
source scripts/env.sh
out="target/bench-all/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
summary="$out/summary.md"
bin=${CARGO_TARGET_DIR:-target}/release/spendguard

if [ -n "$build" ]; then
  cargo build --release --locked --bin spendguard
fi
if [ -n "$quick" ]; then
  intents=4000; agents=2000; duration=10; measure=1
else
  intents=20000; agents=10000; duration=30; measure=3
fi

{
  echo "# bench-all $(date -u +%FT%TZ) — $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)${quick:+ — QUICK (not for quoting)}"
  echo
  echo "| bench | command | result |"
  echo "|---|---|---|"
} > "$summary"
row() { echo "| $1 | \`$2\` | $3 |" >> "$summary"; }

if wants criterion; then
  cmd="cargo bench --bench policy_eval -- --warm-up-time 1 --measurement-time $measure"
  $cmd > "$out/criterion.txt" 2>&1 || true
  # criterion prints "name  time:   [low mean high]": keep the mean.
  awk '/^[A-Za-z_\/ -]+$/ {name=$1} /time:/ {gsub(/\[|\]/,""); print name": "$4" "$5}' \
    "$out/criterion.txt" > "$out/criterion-means.txt" || true
  row "evaluator (criterion, mean per call)" "$cmd" "$(paste -sd';' "$out/criterion-means.txt" | sed 's/;/; /g')"
fi

if wants ledger; then
  for variant in "" "--limits agent" "--limits entity" "--shadow"; do
    name="decide + replay${variant:+ $variant}"
    cmd="$bin ledger bench --database-url $DATABASE_URL --agents $agents --intents $intents --batch 200 --concurrency 4 $variant"
    file="$out/ledger${variant// /_}.txt"
    $cmd > "$file" 2>&1 || true
    decide=$(grep -o '[0-9]* decisions/s; batch latency ms p50 [0-9.]* p95 [0-9.]* p99 [0-9.]*' "$file" || echo "failed (see $file)")
    replay=$(grep -o '[0-9]* events ([0-9]* lifecycle) in [0-9.]* s = [0-9]* events/s' "$file" || echo "no replay line")
    rss=$(grep -o 'peak RSS[^:]*: [0-9]* MiB' "$file" | grep -o '[0-9]* MiB' || true)
    row "$name" "$cmd" "$decide; replay --verify $replay${rss:+; peak RSS $rss}"
  done
fi

if wants pipeline; then
  cmd="scripts/bench-loadgen.sh --rate 1000 --duration $duration --agents $agents"
  $cmd > "$out/pipeline.txt" 2>&1 || true
  base=$(awk '$1=="baseline" {print "achieved "$4"/s, p50 "$5" ms, p99 "$7" ms"}' "$out/pipeline.txt")
  pipe=$(awk '$1=="pipeline" {print "achieved "$4"/s, p50 "$5" ms, p99 "$7" ms"}' "$out/pipeline.txt")
  settle=$(awk '$1=="settle" {print "settlements "$4"/s, p99 "$7" ms"}' "$out/pipeline.txt")
  b99=$(awk '$1=="baseline" {print $7}' "$out/pipeline.txt"); p99=$(awk '$1=="pipeline" {print $7}' "$out/pipeline.txt")
  ratio=""
  if [ -n "$b99" ] && [ -n "$p99" ]; then ratio=$(awk -v p="$p99" -v b="$b99" 'BEGIN { if (b > 0) printf "%.1f", p / b }'); fi
  row "bare broker at 1,000/s" "$cmd" "${base:-failed (see $out/pipeline.txt)}"
  row "pipeline at 1,000/s (lifecycle mix)" "$cmd" "${pipe:-failed}; ${settle:-no settlements}; p99 = ${ratio:-?}× the bare broker's (SPEC §10: ≤ 3×); $(grep -o 'serve peak RSS: .*' "$out/pipeline.txt" || true)"
fi

if wants http; then
  cmd="scripts/bench-loadgen.sh --http --no-lifecycle --no-baseline --rate 1000 --duration $duration --agents $agents"
  $cmd > "$out/http.txt" 2>&1 || true
  http=$(awk '$1=="http" || $1=="pipeline" {print "achieved "$4"/s, p50 "$5" ms, p99 "$7" ms"}' "$out/http.txt" | head -1)
  row "POST /v1/intents at 1,000/s" "$cmd" "${http:-failed (see $out/http.txt)} (SPEC §10: p99 ≤ 10 ms)"
fi

if wants sweep; then
  best_base=0; best_pipe=0
  max_rate=${quick:+2000}; max_rate=${max_rate:-8000}
  for r in $(seq 1000 1000 "$max_rate"); do
    file="$out/sweep-$r.txt"
    scripts/bench-loadgen.sh --bin "$bin" --no-lifecycle --rate "$r" --duration "$duration" --agents "$agents" > "$file" 2>&1 || true
    b=$(awk '$1=="baseline" {print $9}' "$file"); p=$(awk '$1=="pipeline" {print $9}' "$file")
    [ "$b" = true ] && best_base=$r
    [ "$p" = true ] && best_pipe=$r
    if [ "$b" != true ] && [ "$p" != true ]; then break; fi
  done
  share=$(awk -v p="$best_pipe" -v b="$best_base" 'BEGIN { if (b > 0) printf "%d", 100 * p / b; else print "?" }')
  row "highest sustained rate, steps of 1,000/s" "scripts/bench-loadgen.sh --no-lifecycle --rate R --duration $duration --agents $agents" \
    "bare broker ${best_base}/s, pipeline ${best_pipe}/s = ${share} % (SPEC §10: ≥ 75 %); runs in $out/sweep-*.txt"
fi
echo
cat "$summary"
echo
echo "raw outputs: $out"
