#!/usr/bin/env bash
# Issue 12, thirteenth round: schedstat.sh flat out and at 20 000/s, the worker at its
# defaults and held to one CPU thread, twice each; output: schedstat.txt.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
for i in 1 2; do
  "$D/schedstat.sh"
  "$D/schedstat.sh" --worker-arg=--cpu-pool-size=1
  "$D/schedstat.sh" --rate 20000
  "$D/schedstat.sh" --rate 20000 --worker-arg=--cpu-pool-size=1
done > "$D/schedstat.txt"
