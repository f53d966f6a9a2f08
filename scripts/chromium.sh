#!/usr/bin/env bash
# Headless Chromium for the console's browser test (tests/api/console.rs, SPEC 13.3):
# Debian's `chromium` package. Only the binary is wanted; the test runs it with
# --headless and its own empty profile.
#
#   scripts/chromium.sh install   # make sure chromium is on PATH (idempotent, quick when present)
#   scripts/chromium.sh path      # print the binary the test will run
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "chromium.sh: need root to run: $*" >&2; exit 1
  fi
}

find_chromium() {
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

install() {
  if find_chromium >/dev/null; then return 0; fi
  echo "chromium.sh: installing Debian's chromium package (headless console screenshots)" >&2
  as_root apt-get update -qq
  # No recommends: fonts and desktop integration beyond the package's own needs are not
  # wanted by a headless test.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    chromium >/dev/null
  find_chromium >/dev/null || { echo "chromium.sh: chromium still missing after install" >&2; exit 1; }
}

case "${1:-install}" in
  install) install ;;
  path) install; find_chromium ;;
  *) echo "usage: scripts/chromium.sh install|path" >&2; exit 2 ;;
esac
