#!/usr/bin/env bash
# promtool checks the Prometheus alert rules in deploy/prometheus/ (`check rules`) and
# runs their unit tests (`test rules`). It ships in Debian's `prometheus` package; only
# the tool is wanted here, never the daemon.
#
#   scripts/promtool.sh install   # make sure promtool is on PATH (idempotent)
#   scripts/promtool.sh check     # install if needed, then check and test the rules
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "promtool.sh: need root to run: $*" >&2; exit 1
  fi
}

install() {
  if command -v promtool >/dev/null 2>&1; then return 0; fi
  echo "promtool.sh: installing Debian's prometheus package for promtool (the daemon is not used)" >&2
  as_root apt-get update -qq
  # No recommends: they would pull in prometheus-node-exporter, another daemon.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  # In a container a policy-rc.d usually stops the postinst from starting the daemon; on
  # a machine with an init system it may have started (port 9090). Only promtool is
  # wanted, so stop and disable it. Never touches anything else.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v invoke-rc.d >/dev/null 2>&1; then
    as_root invoke-rc.d prometheus stop >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || { echo "promtool.sh: promtool still missing after install" >&2; exit 1; }
}

case "${1:-check}" in
  install) install ;;
  check)
    install
    promtool check rules deploy/prometheus/alerts.yml
    (cd deploy/prometheus && promtool test rules alerts_test.yml)
    ;;
  *) echo "usage: scripts/promtool.sh install|check" >&2; exit 2 ;;
esac
