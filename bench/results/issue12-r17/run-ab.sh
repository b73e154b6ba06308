#!/usr/bin/env bash
# Issue 12, seventeenth round (copied from issue12-r15): one step against the step before it, flat out, N pairs of 3 s
# runs without the plain loop (each with its own null echo), old and new alternating with
# the order swapped each round. Usage: run-ab.sh TAG OLD_BIN NEW_BIN [N]; reports land in
# $O/TAG-{old,new}-rK and are copied here as TAG-{old,new}-rK.{json,txt};
# then `python3 ../issue12-r12/pairs.py . TAG` and `python3 ../issue12-r9/summarize.py .`.
# Extra bench arguments from $EXTRA (e.g. EXTRA=--worker-arg=--cpu-pool-size=1).
# Steps run with it (binaries: `cargo build --profile deb -p beamline_worker`):
#   check: old = 73eca01 (/tmp/bw-head), new = the pre-parse depth count by memchr, the
#     lone surrogates mended, simd-json's value-no-dup-keys (/tmp/bw-new), with
#     EXTRA=--worker-arg=--cpu-pool-size=1 (one lane).
set -euo pipefail
tag=$1 old=$2 new=$3 n=${4:-10}
B=/tmp/beamline-bench O=${O:-/tmp/r17}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    bin=$old; [ "$c" = new ] && bin=$new
    name="$tag-$c-r$round"
    $B --worker-bin "$bin" --scenario fs-get --duration 3 --no-plain ${EXTRA:-} --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
