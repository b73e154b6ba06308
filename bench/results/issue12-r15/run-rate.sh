#!/usr/bin/env bash
# Issue 12, fifteenth round (2026-11-28): old and new worker at their defaults, flat out
# (RATE = flat) or at a fixed rate, interleaved (order swapped each round), each run with its own null echo (and plain loop
# unless NOPLAIN=1). Usage: run-rate.sh TAG RATE OLD_BIN NEW_BIN [N]; reports land in
# $O/TAG-{old,new}-rK and are copied here as TAG-{old,new}-rK.{json,txt}.
# Runs: x20k-t8 (turn/README.txt); def-flat and def-20k: old = 70b7581 (/tmp/bw-base), new =
# 304a834 (/tmp/bw-new), 5 and 3 rounds.
# Binaries: `cargo build --profile deb -p beamline_worker -p beamline-bench`, bench copied
# to /tmp/beamline-bench.
set -euo pipefail
tag=$1 rate=$2 old=$3 new=$4 n=${5:-3}
B=/tmp/beamline-bench O=${O:-/tmp/r15}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
plain=(); [ "${NOPLAIN:-0}" = 1 ] && plain=(--no-plain)
load=(--rate "$rate"); [ "$rate" = flat ] && load=()
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    bin=$old; [ "$c" = new ] && bin=$new
    name="$tag-$c-r$round"
    $B --worker-bin "$bin" --scenario fs-get --duration 5 "${load[@]}" "${plain[@]}" --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
