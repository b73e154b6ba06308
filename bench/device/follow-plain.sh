#!/usr/bin/env bash
# follow.sh, then the worker at its computed defaults beside the plain loop (targets 1, 2
# and 5 on the 16-core host with the ninth round's lanes): flat out and 20 000/s, two
# rounds, null echo and plain loop in each run. About 6 minutes. Carry bench/device/.bin.
#   bash bench/device/follow-plain.sh "$OUT"
set -uo pipefail
here="$(dirname "$0")"
bash "$here/follow.sh" "$@"
. "$here/lib.sh" "${1:-}" plain.log
for r in 1 2; do
  for rate in flat 20000; do
    extra=()
    [ "$rate" = flat ] || extra=(--rate "$rate")
    say "plain-$rate-r$r: ${extra[*]}"
    timeout 90 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get \
      --duration 5 --out "$w/plain-$rate-r$r" "${extra[@]}" >>"$log" 2>&1 || say "plain-$rate-r$r rc $?"
  done
done
pack plain-reports.tgz
say done
