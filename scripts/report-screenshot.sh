#!/usr/bin/env bash
# Renders a compliance report (the self-contained HTML of `spendguard report --format
# html`) to a PNG with headless Chromium, as a check that it opens offline and as an
# image for documents.
#
#   scripts/report-screenshot.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
#
# Installs the Debian package `chromium` when it is missing (needs root / apt).
# Network is disabled for the browser, so a report that needed anything online would
# render broken here.
set -euo pipefail

html=${1:?usage: scripts/report-screenshot.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-${html%.html}.png}
size=${3:-1200x3000}

[ -f "$html" ] || { echo "no such report: $html" >&2; exit 2; }

browser=""
for candidate in chromium chromium-browser; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
if [ -z "$browser" ]; then
  echo "installing the Debian package chromium (headless browser for the screenshot)" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=""; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
  browser=chromium
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$abs_out"

# --virtual-time-budget lets layout settle; there is no script or network to wait for.
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-extensions --hide-scrollbars --user-data-dir="$profile" \
  --window-size="${size/x/,}" --virtual-time-budget=2000 \
  --screenshot="$abs_out" "file://$abs_html" >/dev/null 2>"$profile/chromium.log" || {
    echo "chromium failed:" >&2; cat "$profile/chromium.log" >&2; exit 1; }

[ -s "$abs_out" ] || { echo "chromium wrote no screenshot; log:" >&2; cat "$profile/chromium.log" >&2; exit 1; }
# A PNG starts with the 8-byte signature \x89PNG\r\n\x1a\n.
if [ "$(head -c 4 "$abs_out" | tail -c 3)" != "PNG" ]; then
  echo "$abs_out is not a PNG" >&2; exit 1
fi
echo "$abs_out"
