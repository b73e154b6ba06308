#!/usr/bin/env bash
# Issue 12, eleventh round (2026-11-28): the dedupe store's records in per-shard rings
# (runtime/dedupe/shard.rs) instead of one map of their own buffers under one lock.
# Binaries: `cargo build --profile deb -p beamline_worker -p beamline-bench`; /tmp/bw-old at
# 02b9855, /tmp/bw-new the same with this round's change (uncommitted when built). Reports
# are copied here as <run>.json with the bench's stdout as <run>.txt; then
# `python3 ../issue12-r9/summarize.py . > summary.txt`. Each invocation runs its own null
# echo and plain loop; old and new alternate, the order swapped every round. Here (2-vCPU
# VM), the worker at its defaults (log level included).
set -euo pipefail
B=/tmp/beamline-bench O=${O:-/tmp/r11}
run() { # name bin args...
  local name=$1 bin=$2; shift 2
  $B --worker-bin "$bin" --scenario fs-get --out "$O/$name" "$@" > "$O/$name.txt" 2>&1
  rm -rf "$O/$name/logs"
}
pair() { # round rate-name args...
  local round=$1 rate=$2; shift 2
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do run "$c-$rate-r$round" "/tmp/bw-$c" "$@"; done
}
mkdir -p "$O"
for round in 1 2 3 4 5; do pair "$round" flat --duration 5; done
for round in 1 2 3 4 5; do pair "$round" 20000 --rate 20000 --duration 5; done
# Flat out only, ten more pairs, 3 s each, no plain loop (the five above were too noisy to
# tell a ~5 % difference apart):
for round in $(seq 1 10); do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do run "ab-$c-r$round" "/tmp/bw-$c" --duration 3 --no-plain; done
done
# Target 3 over time: 1 000 000 tasks in one process, each binary once, sampled by the
# second round's wrapper (CPU ticks, worker_tasks_total and RSS every 0.5 s), split into
# segments of at least 100 000 tasks by its segments.py. As run: `run` adds --scenario
# fs-get and so does this line, so the bench measured the scenario twice in the one worker
# process, 2 000 000 tasks; left so, so that this script reproduces what was committed.
R2=$(cd "$(dirname "$0")/../issue12-r2" && pwd)
for c in old new; do
  rm -f "$O/million-$c.samples"
  WORKER="/tmp/bw-$c" SAMPLES="$O/million-$c.samples" \
    run "million-$c" "$R2/sample.sh" --scenario fs-get --count 1000000 --no-plain
  python3 "$R2/segments.py" "$O/million-$c.samples" "$O/million-$c-segments.svg" > "$O/million-$c.segments"
done
# Into this directory, and the medians:
D=$(cd "$(dirname "$0")" && pwd)
for d in "$O"/*/; do n=$(basename "$d"); cp "$d"/report-*.json "$D/$n.json"; done
cp "$O"/*.txt "$O"/million-*.samples "$O"/million-*.segments "$O"/million-*-segments.svg "$D/"
python3 "$D/../issue12-r9/summarize.py" "$D" > "$D/summary.txt"
# The store alone (dedupe-cost-old.txt, dedupe-cost-new.txt): in a checkout of each,
# with examples/dedupe_cost.rs of this round copied in for the old one,
#   cargo build --release --example dedupe_cost && for i in 1 2 3; do target/release/examples/dedupe_cost; done
# Later in the session, five more rounds at fixed rates (5 000/s, then 20 000/s, old and new
# alternating, the order swapped each round), into $O and copied here the same way:
for round in 6 7 8 9 10; do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do run "$c-5000-r$round" "/tmp/bw-$c" --rate 5000 --duration 5; done
  for c in "${order[@]}"; do run "$c-20000-r$round" "/tmp/bw-$c" --rate 20000 --duration 5; done
done
