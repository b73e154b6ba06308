#!/usr/bin/env bash
# Issue 12, eighth round (2026-11-28): how the worker's CPU per task depends on how many CPU
# threads share a load. Binaries: `cargo build --profile deb -p beamline_worker -p
# beamline-bench` at 958679a, copied to /tmp. Here (2-vCPU VM):
set -euo pipefail
B=/tmp/beamline-bench W=/tmp/beamline_worker
for r in 5000 20000; do for c in 1 2; do
  $B --worker-bin $W --cpu-pool-size $c --scenario fs-get --rate $r --duration 5 --repeat 2 --out /tmp/lo/c$c-r$r
done; done                                                   # -> local-c{1,2}-r{5000,20000}.json
for c in 1 2 1 2; do $B --worker-bin $W --cpu-pool-size $c --scenario fs-get --duration 5 --out /tmp/lo/flat-c$c; done
                                                             # -> local-flat-c{1,2}-r{1,2}.json
bash bench/device/lanes.sh /tmp/lo/lanes-local               # -> local-lanes.log (stripped deb binaries in bench/device/.bin)
# On the device (H200 host, 16 vCPUs), carry bench/device/.bin:
#   bash bench/device/tune-gpu.sh "$OUT"; bash bench/device/lanes.sh "$OUT"; bash bench/device/sweep-16c.sh "$OUT"
#   -> bench/results/device-h200-2026-11-28-second/
# The tune with its new candidates (fewer CPU threads than cores, unpinned), here:
#   cargo build --release -p beamline_worker -p beamline-bench   (at the commit after 0078784)
#   beamline-bench tune --budget-minutes 1.5 --duration 2 --scenario fs-get --worker-bin target/release/beamline_worker \
#     --out /tmp/lo/tune --profile-out /tmp/lo/tune.toml        # -> local-tune-new-candidates.txt (its header)
# The log line alone, before (f297948) and after (b5fdaa5), five interleaved pairs:
#   cargo build --release --example log_line_cost        # at each commit; copies in /tmp/llc-before, /tmp/llc-after
#   for i in 1 2 3 4 5; do /tmp/llc-before > log-line-before-r$i.txt; /tmp/llc-after > log-line-after-r$i.txt; done
#   perf record -F 1999 --call-graph dwarf,8192 -o ll.data -- <binary>; perf report --no-children --comm <name> --sort sym -g none
#                                                        # -> log-line-profile-{before,after}.txt
