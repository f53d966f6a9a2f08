#!/usr/bin/env bash
# The project's test command (README "Run the tests"). Brings up the real servers the
# integration tests need (PostgreSQL and the tansu Kafka-protocol broker), then runs
# every test. With CI=true a test that cannot reach a server fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# The C toolchain and OpenSSL headers librdkafka is built with (TLS, SASL SCRAM).
scripts/build-deps.sh
scripts/services.sh up
# A Compose implementation validates docker-compose.yml (no engine needed).
scripts/compose.sh install
# promtool checks and unit-tests the Prometheus alert rules (Debian's prometheus package).
scripts/promtool.sh install
# Headless Chromium screenshots the web console (Debian's chromium package).
scripts/chromium.sh install
# shellcheck disable=SC1091
source scripts/env.sh

cargo test --locked --all-targets --no-fail-fast "$@"
