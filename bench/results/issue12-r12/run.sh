#!/usr/bin/env bash
# Issue 12, twelfth round (2026-11-28): the inline fs.get opens `root/rel` in one walk
# (`openat2(AT_FDCWD, .., RESOLVE_NO_SYMLINKS)`) instead of a `statx` of the kept root's
# path and an `openat2` beneath it (io/src/machine.rs, `whole_path`).
# Binaries: `cargo build --profile deb -p beamline_worker -p beamline-bench`; /tmp/bw-old at
# 7886539, /tmp/bw-new the same with this round's change (uncommitted when built). Reports
# are copied here as <run>.json with the bench's stdout as <run>.txt; then
# `python3 ../issue12-r9/summarize.py . > summary.txt`. Each invocation runs its own null
# echo (and plain loop unless --no-plain); old and new alternate, the order swapped every
# round. Here (2-vCPU VM), the worker at its defaults (log level included).
set -euo pipefail
B=/tmp/beamline-bench O=${O:-/tmp/r12}
run() { # name bin args...
  local name=$1 bin=$2; shift 2
  $B --worker-bin "$bin" --scenario fs-get --out "$O/$name" "$@" > "$O/$name.txt" 2>&1
  rm -rf "$O/$name/logs"
}
order() { if (( $1 % 2 )); then echo old new; else echo new old; fi; }
mkdir -p "$O"
for round in $(seq 1 10); do
  for c in $(order "$round"); do run "ab-$c-r$round" "/tmp/bw-$c" --duration 3 --no-plain; done
done
for round in 1 2 3 4 5; do
  for c in $(order "$round"); do run "$c-flat-r$round" "/tmp/bw-$c" --duration 5; done
done
for round in 1 2 3 4 5; do
  for c in $(order "$round"); do run "$c-20000-r$round" "/tmp/bw-$c" --rate 20000 --duration 5; done
done
D=$(cd "$(dirname "$0")" && pwd)
for d in "$O"/*/; do n=$(basename "$d"); cp "$d"/report-*.json "$D/$n.json"; done
cp "$O"/*.txt "$D/"
python3 "$D/../issue12-r9/summarize.py" "$D" > "$D/summary.txt"
