#!/usr/bin/env bash
# Target 5 on the 16-core host with the ninth round's lanes: at 20 000/s the default rule
# leaves (likely) one lane subscribed and the result p99 went from 0.78 ms (every lane in,
# eighth round) to 1.6-1.8 ms (2026-11-28, third loan: device-h200-2026-11-28-third).
# This measures what a floor of lanes costs and buys: --min-lanes 1 (the default), 2 and
# 4, at 20 000/s and flat out, interleaved, two rounds, about 3 minutes. Carry
# bench/device/.bin (as run.sh's header says).
#   bash bench/device/min-lanes.sh "$OUT"
. "$(dirname "$0")/lib.sh" "${1:-}" min-lanes.log
for r in 1 2; do
  for load in 20000 flat; do
    rate=(); [ "$load" = flat ] || rate=(--rate "$load")
    for m in 1 2 4; do
      bench "min$m-$load-r$r" 60 "${rate[@]}" "--worker-arg=--min-lanes=$m"
    done
  done
done
pack min-lanes-reports.tgz
say done
