#!/bin/sh
# fs.get at the worker's defaults against the same worker with unpinned pools
# (unpinned.toml), interleaved, order swapped each round, plain loop in every run:
# sh run-pin.sh WORKER RATE|flat [N]; logs pin-RATE-{pinned,unpinned}-rK.log.
set -eu
BENCH=${BENCH:-/tmp/beamline-bench}
W=$1; RATE=$2; N=${3:-4}
DIR=$(cd "$(dirname "$0")" && pwd)
one() {
    out=$(mktemp -d)
    r=""
    [ "$RATE" = flat ] || r="--rate $RATE"
    {
        echo "# worker $W; $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH --worker-bin $W --scenario fs-get --duration 5 $r $2 --out $out"
    } >"$DIR/$1.log"
    # shellcheck disable=SC2086
    "$BENCH" --worker-bin "$W" --scenario fs-get --duration 5 $r $2 --out "$out" >>"$DIR/$1.log" 2>&1 || echo "# exit $?" >>"$DIR/$1.log"
    cp "$out"/report-*.json "$DIR/$1.json" 2>/dev/null || true
    rm -rf "$out"
}
U="--worker-arg=--profile=$DIR/unpinned.toml"
i=1
while [ $i -le "$N" ]; do
    if [ $((i % 2)) -eq 1 ]; then one pin-$RATE-pinned-r$i ""; one pin-$RATE-unpinned-r$i "$U"
    else one pin-$RATE-unpinned-r$i "$U"; one pin-$RATE-pinned-r$i ""; fi
    i=$((i + 1))
done
