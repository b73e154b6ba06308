#!/usr/bin/env bash
# Issue 12, fourteenth round: `examples/log_line_cost.rs` three ways, interleaved, order
# rotated each round: old (7b4cfba: the line through `tracing`), hash (7b4cfba with only
# the field-name table probed, `SeenNames`), new (that and the line written directly by
# `logs::StepLine::log`). Binaries: `cargo build --profile deb -p beamline_worker
# --example log_line_cost` of each, copied to /tmp/llc-{old,hash,new}.
# Output: log-line3-{old,hash,new}-rK.txt and the medians per binary.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
for k in $(seq 1 "${1:-6}"); do
  case $((k % 3)) in
    1) order=(old hash new);; 2) order=(hash new old);; 0) order=(new old hash);;
  esac
  for c in "${order[@]}"; do
    /tmp/llc-$c > "$D/log-line3-$c-r$k.txt"
  done
done
for c in old hash new; do
  echo "$c: $(for f in "$D"/log-line3-$c-r*.txt; do grep -o 'median [0-9]* ns' "$f" | grep -o '[0-9]*'; done | sort -n | tr '\n' ' ')"
done
