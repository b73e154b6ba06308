#!/usr/bin/env bash
# Issue 12, twelfth round: one step against the step before it, flat out, N pairs of 3 s
# runs without the plain loop (each with its own null echo), old and new alternating with
# the order swapped each round. Usage: run-ab.sh TAG OLD_BIN NEW_BIN [N]; reports land in
# $O/TAG-{old,new}-rK and are copied here as TAG-{old,new}-rK.{json,txt};
# then `python3 pairs.py . TAG` and `python3 ../issue12-r9/summarize.py .`.
# Steps run with it (binaries: `cargo build --profile deb -p beamline_worker` of each):
#   hist: old = 7062def (one walk), new = the same with worker_task_latency_ms and
#     worker_task_cpu_time_ms counted in per-thread shards (a Collector of our own instead
#     of prometheus::Histogram) and a CPU thread's tasks sharing one Rc of those handles
#     instead of two Arc clones each. Not kept: 15.2 -> 15.5 µs/task, new lower in 4 of 10
#     (`python3 pairs.py . hist`). sharded-metrics.diff is that change as it stood when it
#     was dropped: the measured histogram part, plus the same for worker_tasks_total,
#     worker_assignments_total and worker_task_polls_total, written but never built or
#     measured.
#   b64: old = 7062def (one walk), new = + base64-simd for fs.get's content (uncommitted when built)
set -euo pipefail
tag=$1 old=$2 new=$3 n=${4:-10}
B=/tmp/beamline-bench O=${O:-/tmp/r12}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  if (( round % 2 )); then order=(old new); else order=(new old); fi
  for c in "${order[@]}"; do
    bin=$old; [ "$c" = new ] && bin=$new
    name="$tag-$c-r$round"
    $B --worker-bin "$bin" --scenario fs-get --duration 3 --no-plain --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
