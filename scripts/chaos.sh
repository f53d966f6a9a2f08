#!/usr/bin/env bash
# The chaos run of SPEC §15: 3 `serve` instances under a stream of intents, votes and
# settlements (captures, part captures then voids) while a seeded fault schedule
# SIGKILLs, pauses (SIGSTOP/SIGCONT) and cuts, delays and black-holes their PostgreSQL
# connections (through a fault-injecting proxy); then checks that every intent has
# exactly one decision, every vote and every settlement was applied once, no cap was
# exceeded, no authorization was captured past its amount, nothing valid was
# dead-lettered or set aside, and the chains and replay verify.
# The test suite runs a 20 s schedule; this script runs any seed and length.
#
#   scripts/chaos.sh [--seed N] [--duration S] [--rate INTENTS_PER_S] [--broker-faults] [--release]
#
# --broker-faults: the run gets a tansu of its own (SQLite storage) behind a proxy and the
# schedule also makes the broker unreachable for 0.5-3 s (connections cut, new ones
# refused) and restarts it (SIGKILL or SIGTERM, down 0.5-3 s, same port and storage).
#
# Brings up PostgreSQL and tansu like the tests (scripts/services.sh up). Results go to
# stderr; record long runs in docs/reliability.md with the seed.
set -euo pipefail
cd "$(dirname "$0")/.."

seed=1
duration=120
rate=50
profile=()
broker_faults=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --release) profile=(--release); shift ;;
    --broker-faults) broker_faults=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/services.sh up
# shellcheck disable=SC1091
source scripts/env.sh
SPENDGUARD_CHAOS_SEED="$seed" SPENDGUARD_CHAOS_DURATION_S="$duration" SPENDGUARD_CHAOS_RATE="$rate" \
  SPENDGUARD_CHAOS_BROKER_FAULTS="$broker_faults" \
  cargo test --locked "${profile[@]}" --test service crash::chaos_run -- --nocapture
