#!/usr/bin/env bash
# Issue 12, fifteenth round (2026-11-28): the landed worker (70b7581) on this session's host
# (a 2-vCPU AMD EPYC KVM guest; each report's first line names it) at its defaults (log
# level included): N flat-out runs and N at 20 000 tasks/s offered, each with its own null
# echo and plain loop. Binaries: `cargo build --profile deb -p beamline_worker -p
# beamline-bench` at 70b7581, worker copied to /tmp/bw-base, bench to /tmp/beamline-bench.
# Then `python3 ../issue12-r9/summarize.py . > summary.txt`.
set -euo pipefail
n=${1:-5}
B=/tmp/beamline-bench O=${O:-/tmp/r15}
D=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$O"
for round in $(seq 1 "$n"); do
  for kind in flat 20000; do
    name="host-$kind-r$round"
    rate=(); [ "$kind" = 20000 ] && rate=(--rate 20000)
    $B --worker-bin /tmp/bw-base --scenario fs-get --duration 5 "${rate[@]}" --out "$O/$name" > "$O/$name.txt" 2>&1
    rm -rf "$O/$name/logs"
    cp "$O/$name"/report-*.json "$D/$name.json"
    cp "$O/$name.txt" "$D/"
  done
done
