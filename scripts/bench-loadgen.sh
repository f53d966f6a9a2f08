#!/usr/bin/env bash
# End-to-end load bench (issue 4, SPEC §10; reported in docs/benchmarks.md, never
# asserted): a fresh tansu broker on its own port (memory storage slows down as topics
# fill, so every run starts empty), a fresh database, one `spendguard serve`, then
# `spendguard loadgen` with its bare-broker baseline in the same run. Prints the loadgen
# report and the serve process's peak RSS; exits with loadgen's status (1 when a
# settlement of the lifecycle mix did not yield exactly one outcome).
#
#   scripts/bench-loadgen.sh [--debug] [--rate 1000] [--duration 30] [--agents 1000]
#                            [--workers N] [--intent-partitions N] [--no-baseline]
#                            [--no-lifecycle] [--lifecycle-mix 70,15,10,5]
#                            [--http | --no-kafka] [--bin PATH]
#                            [--broker-outage SECONDS] [--direct-publish] [--webhooks]
#
# --bin PATH runs that spendguard binary and builds nothing (A/B runs of two builds).
# --direct-publish gives serve `direct_publish: true` (decisions handed to a direct
# publisher after their commit; the default waits for the outbox's claim round): A/B of
# the direct publisher in one build.
# --webhooks measures notifications (SPEC §13.2, issue 15 item 5): the run dir gets a
# notifications.yaml with one webhook `bench` (events decision and outcome, url
# http://127.0.0.1:18090/hook, secret_env SPENDGUARD_BENCH_HOOK_SECRET holding a random
# secret made for the run) given to serve (SPENDGUARD_NOTIFICATIONS), and loadgen receives
# on 127.0.0.1:18090 (--webhook-sink, --webhook-secret-env): it verifies every signature
# and reports deliveries by event, intents notified against decisions received,
# duplicates, bad signatures and the decision delivery latency (intent sent → webhook
# received); serve's spendguard_webhook_* metrics are printed at the end. Not with --http.
# --http measures the synchronous API instead (SPEC §13.4): serve also listens on
# 127.0.0.1:18080 and loadgen POSTs the same intent mix to /v1/intents with the demo
# payment_service token (decisions still go through the outbox to tansu); --no-kafka
# does the same with `serve --no-kafka` and no broker at all.
#
# --broker-outage S freezes the broker (SIGSTOP, so its in-memory topics survive) for S
# seconds from a third of the run, then thaws it (SIGCONT): serve's RSS is sampled every
# 0.5 s and printed before, during and after the outage (issue 16: bounded memory while
# the broker is away). Every run also prints the CPU time each process used (serve,
# loadgen, tansu, PostgreSQL's backends) from /proc: where the machine's cores went.
#
# --workers and --intent-partitions go into a config file given to serve and loadgen
# (defaults: one worker per core, at most 8; 12 partitions for intents and decisions,
# which the baseline topic also gets; --intent-partitions sets spend.settlements's too).
# The lifecycle mix (issue 10) is on unless --no-lifecycle: loadgen settles every ALLOW
# (percent full capture, partial then final, void, capture then refund).
# PostgreSQL comes from scripts/env.sh (started by scripts/services.sh if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
rate=1000
duration=30
agents=1000
workers=
partitions=
loadgen_flags=()
http=
no_kafka=
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --rate) rate="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --agents) agents="$2"; shift ;;
    --workers) workers="$2"; shift ;;
    --intent-partitions) partitions="$2"; shift ;;
    --direct-publish) direct=1 ;;
    --no-baseline) loadgen_flags+=(--no-baseline) ;;
    --no-lifecycle) loadgen_flags+=(--no-lifecycle) ;;
    --lifecycle-mix) loadgen_flags+=(--lifecycle-mix "$2"); shift ;;
    --http) http=1 ;;
    --bin) bin_override="$2"; shift ;;
    --no-kafka) http=1; no_kafka=1 ;;
    --broker-outage) outage_s="$2"; shift ;;
    --webhooks) webhooks=1 ;;
    -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${webhooks:-}" ] && [ -n "$http" ]; then
  echo "--webhooks measures the Kafka path; not with --http or --no-kafka" >&2
  exit 2
fi

scripts/postgres.sh >/dev/null
# shellcheck disable=SC1091
source scripts/env.sh
if [ -z "${bin_override:-}" ]; then
  if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
fi
bin=${bin_override:-${CARGO_TARGET_DIR:-target}/$profile/spendguard}

# One run per machine (the lock is not passed to the broker or serve, which may outlive
# a killed run): the broker port and the scratch database below are fixed, and two
# runs at once would share them (and measure each other's load anyway).
exec 9>/tmp/spendguard-bench-loadgen.lock
# A second run queues behind the first (up to 30 minutes) rather than failing: a helper
# looping over runs, or bench-all, then need no retry loop of their own.
if ! flock -n 9; then
  echo "bench-loadgen: another run holds /tmp/spendguard-bench-loadgen.lock (port 19092, database spendguard_lgbench); waiting for it to end (30 min at most)" >&2
  if ! flock -w 1800 9; then
    echo "bench-loadgen: still held after 30 minutes; giving up" >&2
    exit 1
  fi
fi
dir=target/lgbench
rm -rf "$dir" && mkdir -p "$dir"
# serve refuses to start without a key-encryption key (SPEC §14): a fresh one per run,
# like the scratch database it protects.
"$bin" privacy kek-gen --out "$dir/bench.kek" >/dev/null
export SPENDGUARD_KEK_FILE="$PWD/$dir/bench.kek"
export TANSU_PORT=19092 TANSU_DIR="$PWD/$dir/tansu" TANSU_STORAGE=memory://tansu/
export SPENDGUARD_BROKERS="127.0.0.1:$TANSU_PORT"
scripts/tansu.sh stop >/dev/null 2>&1 || true
[ -n "$no_kafka" ] || scripts/tansu.sh start >/dev/null 9>&-

run_id=$(date +%s)
server=${DATABASE_URL%/*}
db=spendguard_lgbench
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -qc "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="$server/$db"
export SPENDGUARD_TOPIC_PREFIX="lgbench$run_id."
export SPENDGUARD_GROUP_ID="lgbench$run_id"
export SPENDGUARD_LOG="${SPENDGUARD_LOG:-warn}"
config_args=()
if [ -n "$workers$partitions${direct:-}" ]; then
  : >"$dir/serve.yaml"
  [ -n "$workers" ] && printf 'workers: %s\n' "$workers" >>"$dir/serve.yaml"
  [ -n "$partitions" ] && printf 'intent_partitions: %s\nsettlement_partitions: %s\n' "$partitions" "$partitions" >>"$dir/serve.yaml"
  [ -n "${direct:-}" ] && printf 'direct_publish: true\n' >>"$dir/serve.yaml"
  config_args=(--config "$dir/serve.yaml")
fi

# The API always listens: its /metrics gives the latency breakdown printed at the end.
serve_args=(--http-addr 127.0.0.1:18080 --api-tokens examples/api-tokens.yaml)
if [ -n "$http" ]; then
  loadgen_flags+=(--http http://127.0.0.1:18080 --http-token demo-payment-token)
fi
[ -n "$no_kafka" ] && serve_args+=(--no-kafka)
if [ -n "${webhooks:-}" ]; then
  # A fresh secret per run, in the environment of serve (secret_env) and loadgen.
  SPENDGUARD_BENCH_HOOK_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  export SPENDGUARD_BENCH_HOOK_SECRET
  cat >"$dir/notifications.yaml" <<'YAML'
webhooks:
  - id: bench
    url: http://127.0.0.1:18090/hook
    events: [decision, outcome]
    secret_env: SPENDGUARD_BENCH_HOOK_SECRET
YAML
  export SPENDGUARD_NOTIFICATIONS="$PWD/$dir/notifications.yaml"
  loadgen_flags+=(--webhook-sink 127.0.0.1:18090 --webhook-secret-env SPENDGUARD_BENCH_HOOK_SECRET)
fi

serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  scripts/tansu.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$bin" serve --demo --instance lgbench-a "${config_args[@]}" "${serve_args[@]}" >"$dir/serve.log" 2>&1 9>&- &
serve_pid=$!
for _ in $(seq 240); do
  grep -q "spendguard serve: instance .* ready" "$dir/serve.log" && break
  sleep 0.5
done
grep -q "spendguard serve: instance .* ready" "$dir/serve.log" || { echo "serve not ready:"; cat "$dir/serve.log"; exit 1; }

echo "bench-loadgen: $profile build, rate $rate/s for ${duration}s, $agents agents, workers ${workers:-default}, intent partitions ${partitions:-default}, ${http:+HTTP }${no_kafka:+without Kafka }${webhooks:+webhooks }$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
# cpu_ticks PID...: user + system clock ticks the processes used so far (0 if gone).
cpu_ticks() {
  local total=0 pid ticks
  for pid in "$@"; do
    # A PostgreSQL backend may exit between the listing and the read: skip it.
    ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || continue
    [ -n "$ticks" ] && total=$((total + ticks))
  done
  echo "$total"
}
tansu_pid=$(cat "$TANSU_DIR/tansu.pid" 2>/dev/null || true)
# PostgreSQL's backends come and go with connections: its cumulative children's time is
# read from the postmaster (cutime + cstime), plus the live ones.
postmaster=$(pgrep -o -x postgres || pgrep -o postgres || true)
pg_ticks() {
  local live
  live=$(cpu_ticks $(pgrep -x postgres | grep -vx "$postmaster"))
  echo $(($(awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$postmaster/stat") + live))
}
serve_t0=$(cpu_ticks "$serve_pid"); tansu_t0=$(cpu_ticks $tansu_pid); pg_t0=$(pg_ticks)
status=0
"$bin" loadgen "${config_args[@]}" --rate "$rate" --duration "$duration" --agents "$agents" "${loadgen_flags[@]}" &
loadgen_pid=$!
loadgen_ticks=0
rss_log="$dir/serve-rss.txt"
: >"$rss_log"
outage_from=$((duration / 3)); outage_until=$((duration / 3 + ${outage_s:-0}))
started=$(date +%s.%N)
while kill -0 "$loadgen_pid" 2>/dev/null; do
  loadgen_ticks=$(cpu_ticks "$loadgen_pid" | awk -v prev="$loadgen_ticks" '{ print ($1 > prev ? $1 : prev) }')
  elapsed=$(awk -v s="$started" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
  printf '%s %s\n' "$elapsed" "$(awk '/VmRSS/ {print $2}' "/proc/$serve_pid/status")" >>"$rss_log"
  if [ -n "${outage_s:-}" ] && [ -n "$tansu_pid" ]; then
    if [ -z "${frozen:-}" ] && awk -v e="$elapsed" -v f="$outage_from" 'BEGIN { exit !(e >= f) }'; then
      kill -STOP "$tansu_pid"; frozen=1; echo "broker frozen at ${elapsed}s for ${outage_s}s"
    elif [ "${frozen:-}" = 1 ] && awk -v e="$elapsed" -v u="$outage_until" 'BEGIN { exit !(e >= u) }'; then
      kill -CONT "$tansu_pid"; frozen=2; echo "broker thawed at ${elapsed}s"
    fi
  fi
  sleep 0.5
done
wait "$loadgen_pid" || status=$?
[ "${frozen:-}" = 1 ] && kill -CONT "$tansu_pid"
hz=$(getconf CLK_TCK)
awk -v hz="$hz" -v s="$(($(cpu_ticks "$serve_pid") - serve_t0))" -v t="$(($(cpu_ticks $tansu_pid) - tansu_t0))" \
    -v p="$(($(pg_ticks) - pg_t0))" -v l="$loadgen_ticks" 'BEGIN {
  all = s + t + p + l; if (all == 0) all = 1
  printf "CPU seconds during the run (from /proc; PostgreSQL = every backend, this run or not):\n"
  printf "  serve %.1f (%.0f %%), PostgreSQL %.1f (%.0f %%), tansu %.1f (%.0f %%), loadgen %.1f (%.0f %%)\n",
    s / hz, 100 * s / all, p / hz, 100 * p / all, t / hz, 100 * t / all, l / hz, 100 * l / all }'
if [ -n "${outage_s:-}" ]; then
  awk -v f="$outage_from" -v u="$outage_until" '
    { phase = ($1 < f) ? "before" : ($1 < u ? "during" : "after"); if ($2 > peak[phase]) peak[phase] = $2; last[phase] = $2 }
    END { printf "serve RSS (peak / last MiB): before the outage %.0f / %.0f, during %.0f / %.0f, after %.0f / %.0f\n",
      peak["before"] / 1024, last["before"] / 1024, peak["during"] / 1024, last["during"] / 1024, peak["after"] / 1024, last["after"] / 1024 }' "$rss_log"
fi
echo "serve peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$serve_pid/status")"
# Where the time went (issue 15): mean and bucket-estimated p99 of each stage.
curl -s -H 'Authorization: Bearer demo-auditor-token' http://127.0.0.1:18080/metrics >"$dir/metrics.txt" || true
# breakdown METRIC LABEL ORDER...: mean and bucket-estimated p99 of each label value.
breakdown() {
  local metric=$1 label=$2
  shift 2
  awk -v metric="$metric" -v label="$label" -v order="$*" '
    function value(line,   re) { re = label "=\"[a-z_]+\""; match(line, re); return substr(line, RSTART + length(label) + 2, RLENGTH - length(label) - 3) }
    index($0, metric "_bucket{") == 1 {
      st = value($0)
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      n[st]++; les[st, n[st]] = le; cnt[st, n[st]] = $NF
    }
    index($0, metric "_sum{") == 1 { sum[value($0)] = $NF }
    index($0, metric "_count{") == 1 { c[value($0)] = $NF }
    END {
      printf "  %-12s %10s %10s %10s\n", label, "count", "mean ms", "p99 <= ms"
      k = split(order, names, " ")
      for (i = 1; i <= k; i++) {
        st = names[i]; if (!(st in c) || c[st] == 0) continue
        p99 = "+Inf"
        for (j = 1; j <= n[st]; j++) if (cnt[st, j] >= 0.99 * c[st]) { p99 = les[st, j]; break }
        if (p99 != "+Inf") p99 = sprintf("%.1f", p99 * 1000)
        printf "  %-12s %10d %10.2f %10s\n", st, c[st], 1000 * sum[st] / c[st], p99
      }
    }' "$dir/metrics.txt"
}
echo "latency breakdown (serve's spendguard_pipeline_stage_seconds; p99 = upper bound of its bucket;"
echo "for HTTP, queued = request received → its transaction starts):"
breakdown spendguard_pipeline_stage_seconds stage queued decide outbox_wait produce_ack mark
echo "deciding transaction by phase (spendguard_ledger_decide_phase_seconds):"
breakdown spendguard_ledger_decide_phase_seconds phase begin lock read step write commit
if [ -n "${webhooks:-}" ]; then
  echo "webhooks (serve's counters; the backlog gauge is sampled every few send rounds):"
  grep -E '^spendguard_webhook_(delivered_total|failures_total|backlog)' "$dir/metrics.txt" | sed 's/^/  /' || echo "  (none)"
fi
exit "$status"
