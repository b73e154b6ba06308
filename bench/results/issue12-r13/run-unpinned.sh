#!/usr/bin/env bash
# Issue 12, thirteenth round: the landed worker (13eddef, /tmp/bw-base) at its defaults
# (CPU threads pinned, one per core) against the same with no thread pinned
# (--profile unpinned.toml), flat out and at 20 000/s, N pairs of 5 s runs with the null
# echo (no plain loop), order swapped each round.
set -euo pipefail
n=${1:-3}
B=/tmp/beamline-bench O=${O:-/tmp/r13}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(pinned unpinned); else order=(unpinned pinned); fi
  for kind in flat 20000; do
    for c in "${order[@]}"; do
      extra=(); [ "$c" = unpinned ] && extra=(--worker-arg=--profile="$D/unpinned.toml")
      rate=(); [ "$kind" = 20000 ] && rate=(--rate 20000)
      name="pin-$kind-$c-r$round"
      $B --worker-bin /tmp/bw-base "${extra[@]}" "${rate[@]}" --scenario fs-get --duration 5 --no-plain --out "$O/$name" > "$O/$name.txt" 2>&1
      rm -rf "$O/$name/logs"
      cp "$O/$name"/report-*.json "$D/$name.json"
      cp "$O/$name.txt" "$D/"
    done
  done
done
