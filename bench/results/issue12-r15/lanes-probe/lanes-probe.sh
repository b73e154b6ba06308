#!/bin/bash
# usage: lanes-probe.sh TAG BIN [bench args]; samples worker_intake_lanes_active every 0.25 s during a flat-out run
tag=$1 bin=$2; shift 2
out=/tmp/lp/$tag; mkdir -p /tmp/lp
/tmp/beamline-bench --worker-bin "$bin" --scenario fs-get --duration 3 --no-plain --out $out "$@" > $out.txt 2>&1 &
bp=$!
: > $out.lanes
while kill -0 $bp 2>/dev/null; do
  port=$(grep -o '/metrics on :[0-9]*' $out.txt 2>/dev/null | tail -1 | grep -o '[0-9]*$')
  if [ -n "$port" ]; then
    v=$(curl -s --max-time 0.2 http://127.0.0.1:$port/metrics | grep -E '^worker_intake_lanes_active' | awk '{print $2}')
    [ -n "$v" ] && echo "$(date +%s.%N | cut -c1-14) $v" >> $out.lanes
  fi
  sleep 0.25
done
echo "$tag $(grep 'fs.get worker' $out.txt | sed 's/  */ /g' | awk '{print $6, $13}') lanes: $(awk '{print $2}' $out.lanes | tr '\n' ' ')"
