#!/usr/bin/env bash
# Installs what building spendguard needs besides Rust (Debian packages): the C toolchain
# and make for librdkafka (built by the rdkafka crate), pkg-config, and the OpenSSL
# headers librdkafka links for Kafka over TLS and SASL SCRAM (rdkafka's `ssl` feature),
# plus zlib. The Dockerfile's build stage installs the same. Idempotent; fast when all
# is there.
#
#   scripts/build-deps.sh
set -euo pipefail

PACKAGES=(build-essential pkg-config libssl-dev zlib1g-dev)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "build-deps.sh: need root to run: $*" >&2; exit 1
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "build-deps.sh: installing ${missing[*]} from Debian packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
