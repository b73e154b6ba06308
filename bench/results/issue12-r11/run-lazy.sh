#!/usr/bin/env bash
# Issue 12, eleventh round: the rings with lazy unindexing (lazy-unindex.diff on top of
# b5f3ee8; /tmp/bw-v2) against b5f3ee8 itself (/tmp/bw-v1), ten alternating flat-out pairs,
# 3 s each, no plain loop; deb profile, the worker at its defaults. Not kept (see README).
set -euo pipefail
B=/tmp/beamline-bench O=/tmp/r11b
mkdir -p $O
run() { local name=$1 bin=$2; shift 2; $B --worker-bin "$bin" --scenario fs-get --out "$O/$name" "$@" > "$O/$name.txt" 2>&1; rm -rf "$O/$name/logs"; }
for round in $(seq 1 10); do
  if (( round % 2 )); then order=(v1 v2); else order=(v2 v1); fi
  for c in "${order[@]}"; do run "lazy-$c-r$round" "/tmp/bw-$c" --duration 3 --no-plain; done
done
