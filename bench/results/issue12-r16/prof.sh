#!/usr/bin/env bash
# Issue 12, sixteenth round: perf record (dwarf call graphs) of a worker binary under a
# flat-out bench run of one scenario, with the plain loop skipped; perf script output in
# /tmp/cmp/NAME.ps for ../issue12-r10/profile.py (or prof-parts.py here).
# usage: prof.sh NAME WORKER SCENARIO [worker args...]
set -euo pipefail
name=$1; worker=$2; scenario=$3; shift 3
mkdir -p /tmp/cmp
cat > /tmp/bw-perf-$name.sh <<WRAP
#!/bin/bash
exec perf record -F 499 --call-graph dwarf,16384 -o /tmp/cmp/$name.data -- $worker "\$@"
WRAP
chmod +x /tmp/bw-perf-$name.sh
args=()
for a in "$@"; do args+=(--worker-arg="$a"); done
/tmp/beamline-bench --worker-bin /tmp/bw-perf-$name.sh "${args[@]}" --scenario "$scenario" --duration 5 --no-plain --out /tmp/cmp/out-$name > /tmp/cmp/$name.txt 2>&1
pkill -f "^$worker" || true
sleep 1
rm -rf /tmp/cmp/out-$name/*/logs
perf script -i /tmp/cmp/$name.data -F comm,ip,sym 2>/dev/null > /tmp/cmp/$name.ps
grep -E "^core run.*worker" /tmp/cmp/$name.txt
