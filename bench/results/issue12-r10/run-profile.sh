#!/usr/bin/env bash
# Issue 12, tenth round (2026-11-28): where a flat-out core fs.get worker spends its CPU,
# at its defaults (log level included). Binaries from `cargo build --profile deb -p
# beamline_worker -p beamline-bench` at c62be83, copied to /tmp/bw-base and
# /tmp/beamline-bench. The worker runs under perf (a wrapper given as --worker-bin), so the
# bench's own worker CPU figure for this run is not valid (it measures perf); the run's
# tasks/s is lower than without perf. Output: profile-flat.txt (this script's stdout).
set -euo pipefail
cat > /tmp/bw-perf.sh <<'WRAP'
#!/bin/bash
exec perf record -F 499 --call-graph dwarf,16384 -o /tmp/perf-flat.data -- /tmp/bw-base "$@"
WRAP
chmod +x /tmp/bw-perf.sh
/tmp/beamline-bench --worker-bin /tmp/bw-perf.sh --scenario fs-get --duration 5 --no-plain \
  --out /tmp/prof2 > /tmp/prof2.txt 2>&1
rm -rf /tmp/prof2/*/logs
echo "## the bench run (under perf)"
grep -E "^\[core run|^core run|ratio" /tmp/prof2.txt
perf script -i /tmp/perf-flat.data -F comm,ip,sym 2>/dev/null > /tmp/ps.txt
echo "## python3 profile.py (perf script -F comm,ip,sym)"
python3 "$(dirname "$0")/profile.py" /tmp/ps.txt
