#!/usr/bin/env bash
# Core lanes that follow the load (issue 12, ninth round: transport/scale.rs) on the 16-core
# device host, against every lane in the queue group from the start (--min-lanes=128,
# clamped to the CPU pool: the worker before 2026-11-28), the worker at its computed
# defaults otherwise; interleaved, two rounds. Also target 3 with the lanes: 64 against
# 2 000 in flight, flat out. Prepared 2026-11-28 (tenth round) for a session with a device;
# not yet run on one (run here on the 2-vCPU VM only to check it: 20 reports in 4 min 13 s).
# Each run is killed after 60 s.
# Carry bench/device/.bin (as run.sh's header says).
#   bash bench/device/follow.sh "$OUT"
. "$(dirname "$0")/lib.sh" "${1:-}" follow.log
all=--worker-arg=--min-lanes=128
for r in 1 2; do
  for rate in 5000 20000; do
    bench "follow-$rate-r$r" 60 --rate "$rate"
    bench "all-$rate-r$r" 60 --rate "$rate" "$all"
  done
  bench "follow-flat-r$r" 60
  bench "all-flat-r$r" 60 "$all"
  for win in 64 2000; do
    bench "follow-w$win-r$r" 60 --window "$win"
    bench "all-w$win-r$r" 60 --window "$win" "$all"
  done
done
pack follow-reports.tgz
say done
