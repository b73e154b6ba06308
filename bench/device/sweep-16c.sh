#!/usr/bin/env bash
# CPU pool size and pinning on a 16-core, one-GPU device host (issue 12 with issue 10's
# profiles; written 2026-11-28 after bench/device/lanes.sh showed 8 CPU threads beating 16
# flat out and 1 costing a third of 16's CPU per task at 20 000/s). Core fs.get, the
# worker at its defaults but for the profile: the computed defaults, the shipped
# tuning/host-16c-1gpu.toml (12 pinned at the first run; since then the 6-unpinned shape
# that run found best), and unpinned 12/8/6/4 CPU threads with 2 IO and
# 2 GPU slots (tune's best shape on that host). Flat out 5 s x 2; at 20 000/s 5 s x 1.
# About 3.5 minutes. Carry bench/device/.bin (as run.sh's header says).
#   bash bench/device/sweep-16c.sh "$OUT"
. "$(dirname "$0")/lib.sh" "${1:-}" sweep.log
for c in 12 8 6 4; do
  cat >"$w/u$c.toml" <<TOML
name = "unpinned-$c"
hardware = "sweep candidate"
[pools]
cpu_cores = "none"
io_cores = "none"
[worker]
cpu_pool_size = $c
io_pool_size = 2
gpu_pool_size = 2
TOML
done
bench flat-defaults 75 --repeat 2
bench flat-shipped 75 --repeat 2 --profile tuning/host-16c-1gpu.toml
for c in 12 8 6 4; do bench "flat-u$c" 75 --repeat 2 --profile "$w/u$c.toml"; done
bench 20k-defaults 75 --rate 20000
bench 20k-shipped 75 --rate 20000 --profile tuning/host-16c-1gpu.toml
for c in 8 4; do bench "20k-u$c" 75 --rate 20000 --profile "$w/u$c.toml"; done
pack sweep-reports.tgz u12.toml u8.toml u6.toml u4.toml
say done
