#!/usr/bin/env bash
# Issue 12, twelfth round, the whole round: /tmp/bw-old = 7886539 (the round's start),
# /tmp/bw-b64 = 74bec01 (one walk + base64-simd), `cargo build --profile deb -p
# beamline_worker` of each; flat out, 5 s, with the null echo and the plain loop, five
# pairs alternating (order swapped each round). Reports: round-{old,new}-rK.{json,txt};
# `python3 pairs.py . round`.
set -euo pipefail
B=/tmp/beamline-bench O=${O:-/tmp/r12}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in 1 2 3 4 5; do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    bin=/tmp/bw-old; [ "$c" = new ] && bin=/tmp/bw-b64
    name="round-$c-r$round"
    $B --worker-bin "$bin" --scenario fs-get --duration 5 --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
