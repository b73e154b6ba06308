#!/usr/bin/env bash
# How the worker's CPU per task depends on how many CPU threads (each with its own NATS
# lane) share a given load, on a 16-core device host (issue 12; written 2026-11-28 after
# the first run of tune-gpu.sh showed 76 us/task at 20 000/s against 36 flat out). The
# worker at its defaults but for --cpu-pool-size. About 3 minutes.
# Carry bench/device/.bin (as run.sh's header says).
#   bash bench/device/lanes.sh "$OUT"
. "$(dirname "$0")/lib.sh" "${1:-}" lanes.log
for c in 16 4 2 1; do bench "core-20k-cpu$c" 60 --rate 20000 --cpu-pool-size "$c"; done
for c in 8 4; do bench "core-flat-cpu$c" 60 --cpu-pool-size "$c"; done
for c in 16 2; do bench "js-flat-cpu$c" 60 --mode jetstream --cpu-pool-size "$c"; done
pack lanes-reports.tgz
say done
