#!/usr/bin/env bash
# Issue 12, fourteenth round (copied from issue12-r13; 2026-11-28, this round's faster
# 2-vCPU AMD EPYC VM): flat out, the worker at its defaults against the same worker held
# to one CPU thread (--cpu-pool-size=1), N pairs of 5 s runs with the null echo and the
# plain loop in each, order swapped each round.
# Usage: run-lanes.sh TAG BIN [N]; binaries: `cargo build --profile deb -p beamline_worker
# -p beamline-bench` at eafd9b3, worker copied to BIN (/tmp/bw-head), bench to
# /tmp/beamline-bench. Run as: run-lanes.sh lanes /tmp/bw-head 3
set -euo pipefail
tag=$1 bin=$2 n=${3:-3}
B=/tmp/beamline-bench O=${O:-/tmp/r14}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(default one); else order=(one default); fi
  for c in "${order[@]}"; do
    extra=(); [ "$c" = one ] && extra=(--worker-arg=--cpu-pool-size=1)
    name="$tag-$c-r$round"
    $B --worker-bin "$bin" "${extra[@]}" --scenario fs-get --duration 5 --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
