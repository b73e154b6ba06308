#!/usr/bin/env bash
# How the worker's CPU per task depends on how many CPU threads (each with its own NATS
# lane) share a given load, on a 16-core device host (issue 12; written 2026-11-28 after
# the first run of tune-gpu.sh showed 76 us/task at 20 000/s against 36 flat out). The
# worker at its defaults but for --cpu-pool-size. About 3 minutes.
# Carry bench/device/.bin (as run.sh's header says).
#   bash bench/device/lanes.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:?out dir}"; mkdir -p "$out"
bin=bench/device/.bin
export PATH="$PWD/$bin/nats/usr/sbin:$PWD/$bin:$PATH"
log="$out/lanes.log"
say() { echo "[$(date -u +%T)] $*" | tee -a "$log"; }
w=/tmp/lanes; rm -rf "$w"; mkdir -p "$w"
bench() { # name, then bench arguments
  local name=$1; shift
  say "$name: $*"
  timeout 60 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get --duration 5 \
    --out "$w/$name" "$@" >>"$log" 2>&1 || say "$name rc $?"
}
for c in 16 4 2 1; do bench "core-20k-cpu$c" --rate 20000 --no-plain --cpu-pool-size "$c"; done
for c in 8 4; do bench "core-flat-cpu$c" --no-plain --cpu-pool-size "$c"; done
for c in 16 2; do bench "js-flat-cpu$c" --mode jetstream --no-plain --cpu-pool-size "$c"; done
# One file back per kind: the reports' summary rows.
for d in "$w"/*/; do n=$(basename "$d"); for f in "$d"report-*.json; do cp "$f" "$w/$n.json"; done; done
tar czf "$out/lanes-reports.tgz" -C "$w" $(cd "$w" && ls *.json)
say done
