#!/bin/sh
# fs.put at the worker's defaults, two workers interleaved (order swapped each round):
# sh run-put-ab.sh OLD NEW [N]; logs put-{old,new}-rK.log. BENCH as in run-blocks.sh.
set -eu
BENCH=${BENCH:-/tmp/beamline-bench}
OLD=$1; NEW=$2; N=${3:-3}
DIR=$(cd "$(dirname "$0")" && pwd)
one() {
    out=$(mktemp -d)
    {
        echo "# worker $2; $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH --worker-bin $2 --scenario fs-put --duration 5 --repeat 3 --out $out"
    } >"$DIR/$1.log"
    "$BENCH" --worker-bin "$2" --scenario fs-put --duration 5 --repeat 3 --out "$out" >>"$DIR/$1.log" 2>&1 || echo "# exit $?" >>"$DIR/$1.log"
    cp "$out"/report-*.json "$DIR/$1.json" 2>/dev/null || true
    rm -rf "$out"
}
r=1
while [ $r -le "$N" ]; do
    if [ $((r % 2)) -eq 1 ]; then one put-old-r$r "$OLD"; one put-new-r$r "$NEW"
    else one put-new-r$r "$NEW"; one put-old-r$r "$OLD"; fi
    r=$((r + 1))
done
