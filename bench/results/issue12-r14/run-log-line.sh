#!/usr/bin/env bash
# Issue 12, fourteenth round: `examples/log_line_cost.rs` (span + per-step line, thread CPU
# per task, median of 7 rounds of 100 000) before (7b4cfba: the line through `tracing`)
# and after (the line written directly by `logs::StepLine::log`, the field-name table
# probed), interleaved, order swapped each pair. Binaries: `cargo build --profile deb -p
# beamline_worker --example log_line_cost` at each commit, copied to /tmp/llc-old and
# /tmp/llc-new. Output: log-line-{old,new}-rK.txt.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
for k in $(seq 1 "${1:-6}"); do
  if (( k % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    /tmp/llc-$c > "$D/log-line-$c-r$k.txt"
  done
done
for c in old new; do
  echo "$c: $(for f in "$D"/log-line-$c-r*.txt; do grep -o 'median [0-9]* ns' "$f" | grep -o '[0-9]*'; done | sort -n | tr '\n' ' ')"
done
