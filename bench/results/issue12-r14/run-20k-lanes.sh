#!/usr/bin/env bash
# Issue 12, fourteenth round (copied from issue12-r13): at 20 000 tasks/s offered, the
# worker at eafd9b3 (BIN, default /tmp/bw-head) at its defaults against the same held to
# one CPU thread (--cpu-pool-size=1), N pairs of 5 s runs with the null echo (no plain
# loop), order swapped each round.
set -euo pipefail
n=${1:-3}
B=/tmp/beamline-bench O=${O:-/tmp/r14}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(default one); else order=(one default); fi
  for c in "${order[@]}"; do
    extra=(); [ "$c" = one ] && extra=(--worker-arg=--cpu-pool-size=1)
    name="r20k-$c-r$round"
    $B --worker-bin "${BIN:-/tmp/bw-head}" "${extra[@]}" --scenario fs-get --rate 20000 --duration 5 --no-plain --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
