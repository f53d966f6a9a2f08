#!/usr/bin/env bash
# Installs (if missing) and runs the tansu Kafka-protocol broker for development and tests.
#
#   scripts/tansu.sh install   # cargo install, exact version of SPEC §8 (skips if present)
#   scripts/tansu.sh start     # install if needed, start in the background, wait for the port
#   scripts/tansu.sh stop      # stop the broker this script started (pid file)
#   scripts/tansu.sh status    # exit 0 when the port answers
#
# Settings (environment):
#   TANSU_PORT      listen port (default 9092)
#   TANSU_STORAGE   storage engine URL (default memory://tansu/; e.g. sqlite://$TANSU_DIR/tansu.db
#                   for data that survives a broker restart). tansu's PostgreSQL engine needs
#                   a schema it does not create itself: do not use it here.
#   TANSU_DIR       pid file and log directory (default target/tansu)
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
TANSU_PORT="${TANSU_PORT:-9092}"
TANSU_DIR="${TANSU_DIR:-$PWD/target/tansu}"
TANSU_STORAGE="${TANSU_STORAGE:-memory://tansu/}"
PID_FILE="$TANSU_DIR/tansu.pid"
LOG_FILE="$TANSU_DIR/tansu.log"
# Waiting for the port: 60 tries of 0.5 s.
START_TRIES=60

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; else echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; fi
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$TANSU_PORT") 2>/dev/null
}

install() {
  if [ -x "$(tansu_bin)" ] && "$(tansu_bin)" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION (one-time build, about 10-15 minutes)..." >&2
  cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore,libsql
}

start() {
  if port_open; then
    echo "a broker already answers on 127.0.0.1:$TANSU_PORT" >&2
    return 0
  fi
  install
  mkdir -p "$TANSU_DIR"
  # RUST_LOG=warn: tansu logs every request at info, which costs throughput and disk.
  RUST_LOG="${RUST_LOG:-warn}" nohup "$(tansu_bin)" broker \
    --cluster-id spendguard \
    --listener-url "tcp://0.0.0.0:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --storage-engine "$TANSU_STORAGE" \
    >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq "$START_TRIES"); do
    if port_open; then
      echo "tansu started (pid $(cat "$PID_FILE"), port $TANSU_PORT, storage $TANSU_STORAGE, log $LOG_FILE)" >&2
      return 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "tansu exited during start-up; last lines of $LOG_FILE:" >&2
      tail -n 20 "$LOG_FILE" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "tansu did not open port $TANSU_PORT in time; see $LOG_FILE" >&2
  return 1
}

stop() {
  if [ -f "$PID_FILE" ]; then
    local pid
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$PID_FILE"
    echo "tansu stopped" >&2
  else
    echo "no pid file at $PID_FILE: nothing started by this script" >&2
  fi
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if port_open; then echo "up on 127.0.0.1:$TANSU_PORT"; else echo "down"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
