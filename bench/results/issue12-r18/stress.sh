#!/usr/bin/env bash
# Runs e2e_health's fs_work_counts_in_the_io_pool_gauge_and_cpu_time_is_a_histogram N times,
# each beside two busy loops (the 2-core VM made as busy as a loaded CI run), and prints
# each run's outcome. Usage: bash stress.sh N  (from the repository root).
set -u
n=${1:-5}
cargo test -q -p beamline_worker --test e2e_health --no-run 2>&1 | tail -1
echo "# commit $(git rev-parse --short HEAD), publish.rs $(git diff --quiet HEAD -- src/transport/publish.rs && echo as-committed || echo changed)"
for i in $(seq 1 "$n"); do
  timeout 40 sh -c 'while :; do :; done' & b1=$!
  timeout 40 sh -c 'while :; do :; done' & b2=$!
  echo "## run $i"
  cargo test -q -p beamline_worker --test e2e_health fs_work_counts -- --nocapture 2>&1 \
    | grep -E "io in flight|only [0-9]+ of|test result"
  kill "$b1" "$b2" 2>/dev/null; wait "$b1" "$b2" 2>/dev/null
done
