#!/bin/sh
# Issue 12, sixteenth round: the same worker at 20 000 fs.get/s, as it is ("plain") and
# with its CPU threads asking EEVDF for a 0.1 ms slice (sched_setattr sched_runtime,
# set from outside by set_slice.py once the worker is up: "short"), interleaved, order
# swapped each round; null echo and plain loop in every call, 3 repeats each.
# usage: sh run-slice.sh WORKER [N] [RATE]; logs slice-RATE-{as-is,short}-rK.log
set -eu
BENCH=${BENCH:-/tmp/beamline-bench}
W=$1; N=${2:-4}; RATE=${3:-20000}
DIR=$(cd "$(dirname "$0")" && pwd)
one() {
    out=$(mktemp -d)
    log="$DIR/$1.log"
    r=""
    [ "$RATE" = flat ] || r="--rate $RATE"
    {
        echo "# worker $W ($2); $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH --worker-bin $W --scenario fs-get $r --duration 5 --repeat 3 --out $out"
    } >"$log"
    # shellcheck disable=SC2086
    "$BENCH" --worker-bin "$W" --scenario fs-get $r --duration 5 --repeat 3 --out "$out" >>"$log" 2>&1 &
    b=$!
    if [ "$2" = short ]; then
        while ! grep -q "worker core: ready" "$log"; do sleep 0.1; done
        pid=$(pgrep -f "^$W" | head -1)
        python3 "$DIR/set_slice.py" "$pid" cpu- 100000 | sed 's/^/# /' >>"$DIR/$1.slice"
    fi
    wait $b || echo "# exit $?" >>"$log"
    cp "$out"/report-*.json "$DIR/$1.json" 2>/dev/null || true
    rm -rf "$out"
}
i=1
while [ $i -le "$N" ]; do
    if [ $((i % 2)) -eq 1 ]; then one slice-$RATE-as-is-r$i as-is; one slice-$RATE-short-r$i short
    else one slice-$RATE-short-r$i short; one slice-$RATE-as-is-r$i as-is; fi
    i=$((i + 1))
done
