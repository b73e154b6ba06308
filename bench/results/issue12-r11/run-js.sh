#!/usr/bin/env bash
# Issue 12, eleventh round: JetStream mode, old (02b9855) against new (b5f3ee8), three
# alternating pairs (then ROUNDS="4 5 6 7 8" for five more) of `--mode jetstream --scenario fs-get --duration 5 --no-plain` (the
# JetStream null consumer in every run), the worker at its defaults; binaries as in run.sh.
set -euo pipefail
B=/tmp/beamline-bench O=${O:-/tmp/r11js}
mkdir -p "$O"
D=$(cd "$(dirname "$0")" && pwd)
for round in ${ROUNDS:-1 2 3}; do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    $B --worker-bin "/tmp/bw-$c" --mode jetstream --scenario fs-get --duration 5 --no-plain \
      --out "$O/js-$c-r$round" > "$O/js-$c-r$round.txt" 2>&1
    rm -rf "$O/js-$c-r$round/logs"
    cp "$O/js-$c-r$round"/report-*.json "$D/js-$c-r$round.json"
    cp "$O/js-$c-r$round.txt" "$D/"
  done
done
