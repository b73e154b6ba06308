#!/usr/bin/env bash
# One command for a newcomer: installs nats-server if missing, starts a local NATS with
# JetStream when none answers on 127.0.0.1:4222, builds and starts the worker, sends the
# integration guide's example assignments through it and prints the acks and results.
#   ./scripts/run-local.sh           # demo, then stop the worker
#   ./scripts/run-local.sh --keep    # leave the worker running (Ctrl-C stops it)
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP="${1:-}"
PORT="${NATS_PORT:-4222}"
export NATS_URL="nats://127.0.0.1:${PORT}"
DATA="${BEAMLINE_DATA:-$PWD/beamline-data}"
mkdir -p "$DATA/fs" "$DATA/sql" "$DATA/nats"

./scripts/ensure-nats.sh
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)

# GET over /dev/tcp (no curl needed): prints the body, fails unless the status is 200.
http_get() {
  exec 4<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&4
  local resp; resp=$(cat <&4); exec 4<&-
  [[ "$resp" == "HTTP/1.1 200"* ]] || return 1
  printf '%s\n' "${resp#*$'\r\n\r\n'}"
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; then
  echo "== using the NATS already answering on 127.0.0.1:${PORT} (it must have JetStream enabled)"
else
  echo "== starting nats-server -js on 127.0.0.1:${PORT} (store: $DATA/nats, log: $DATA/nats.log)"
  "$NATS_BIN" -a 127.0.0.1 -p "$PORT" -js -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null && break; sleep 0.1; done
fi

echo "== building (cargo build --release --bin beamline_worker --example demo)"
cargo build --release --quiet --bin beamline_worker --example demo

echo "== starting the worker (log: $DATA/worker.log; metrics: http://127.0.0.1:9090/metrics, health: http://127.0.0.1:9091/_health)"
./target/release/beamline_worker \
  --nats-url="$NATS_URL" --fs-root="$DATA/fs" --sql-root="$DATA/sql" \
  --prometheus-endpoint=127.0.0.1:9090 --health-endpoint=127.0.0.1:9091 \
  --log-format=text >"$DATA/worker.log" 2>&1 &
WORKER=$!
pids+=($WORKER)
for _ in $(seq 100); do http_get 9091 /_health >/dev/null 2>&1 && break; sleep 0.1; done

echo "== sending the guide's example assignments"
# The demo exits 1 unless every ack is accepted and every result a success with its ids.
if ! DEMO_SQL_ROOT="$DATA/sql" ./target/release/examples/demo; then
  echo "== FAILED: the example assignments did not all succeed (above); worker log: $DATA/worker.log" >&2
  exit 1
fi
echo "== health: $(http_get 9091 /_health || echo unavailable)"
if [ "$KEEP" = "--keep" ]; then
  echo "== worker running (pid $WORKER); Ctrl-C to stop"
  wait "$WORKER"
fi
