#!/usr/bin/env bash
# Issue 12, thirteenth round: perf record (dwarf call graphs) of the landed worker (/tmp/bw-base,
# 13eddef) under a flat-out fs.get bench run, the worker given extra args; the perf script
# output lands in /tmp/cmp/NAME.ps for cmp.py and ../issue12-r10/profile.py.
# Run as: prof.sh two; prof.sh one --cpu-pool-size=1
# usage: prof.sh NAME [worker args...]
set -euo pipefail
name=$1; shift
cat > /tmp/bw-perf-$name.sh <<WRAP
#!/bin/bash
exec perf record -F 499 --call-graph dwarf,16384 -o /tmp/cmp/$name.data -- /tmp/bw-base "\$@"
WRAP
chmod +x /tmp/bw-perf-$name.sh
args=()
for a in "$@"; do args+=(--worker-arg="$a"); done
/tmp/beamline-bench --worker-bin /tmp/bw-perf-$name.sh "${args[@]}" --scenario fs-get --duration 5 --no-plain --out /tmp/cmp/out-$name > /tmp/cmp/$name.txt 2>&1
pkill -f /tmp/bw-base || true
sleep 1
rm -rf /tmp/cmp/out-$name/*/logs
perf script -i /tmp/cmp/$name.data -F comm,ip,sym 2>/dev/null > /tmp/cmp/$name.ps
grep -E "^core run.*worker" /tmp/cmp/$name.txt
