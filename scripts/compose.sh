#!/usr/bin/env bash
# Validates docker-compose.yml with a real Compose implementation, without a Docker
# engine: `docker compose config` (v2 plugin) when present, otherwise Debian's
# `docker-compose` (1.29), installed here when missing.
#
#   scripts/compose.sh install   # make sure a Compose implementation is on PATH
#   scripts/compose.sh check     # install if needed, then `config -q` on the file
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "compose.sh: need root to run: $*" >&2; exit 1
  fi
}

have_plugin() { docker compose version >/dev/null 2>&1; }
have_v1() { command -v docker-compose >/dev/null 2>&1; }

install() {
  if have_plugin || have_v1; then return 0; fi
  echo "compose.sh: installing docker-compose from Debian packages (validation only, no engine)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker-compose >/dev/null
}

case "${1:-check}" in
  install) install ;;
  check)
    install
    if have_plugin; then docker compose -f docker-compose.yml config -q; else docker-compose -f docker-compose.yml config -q; fi
    echo "docker-compose.yml: accepted by $(have_plugin && echo 'docker compose' || docker-compose version --short)"
    ;;
  *) echo "usage: scripts/compose.sh install|check" >&2; exit 2 ;;
esac
