#!/usr/bin/env bash
# Issue 12, thirteenth round: the worker_intake_lanes_active gauge of the landed worker
# (/tmp/bw-base) once a second through an 8 s fs.get run at 20 000/s offered (the null
# echo's run comes first, the worker idle then). Output: lanes-gauge.txt.
set -euo pipefail
( /tmp/beamline-bench --worker-bin /tmp/bw-base --scenario fs-get --duration 8 --rate 20000 \
    --no-plain --out /tmp/lanes20k > /tmp/lanes20k.txt 2>&1 & )
sleep 4
for i in $(seq 1 14); do
  pid=$(pgrep -f "^/tmp/bw-base" | head -1) || true
  if [ -n "$pid" ]; then
    port=$(tr '\0' ' ' < /proc/"$pid"/cmdline | grep -o "prometheus-endpoint [0-9.:]*" | awk -F: '{print $2}')
    echo "t=$((i + 4)) s: $(curl -s 127.0.0.1:"$port"/metrics | grep -E '^worker_intake_lanes_active')"
  fi
  sleep 1
done
while pgrep -f "^/tmp/bw-base" > /dev/null; do sleep 0.5; done
grep -E "^\[core run|^core run" /tmp/lanes20k.txt
rm -rf /tmp/lanes20k/*/logs
