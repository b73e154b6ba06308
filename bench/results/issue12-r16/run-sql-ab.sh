#!/bin/sh
# sql.query flat out, two workers interleaved (order swapped each round), a fresh worker
# per call: sh run-sql-ab.sh TAG OLD NEW [N]; logs TAG-{old,new}-rK.log. EXTRA: more bench
# args (e.g. EXTRA="--no-plain --worker-arg=--cpu-pool-size=1"). BENCH as in run-blocks.sh.
set -eu
BENCH=${BENCH:-/tmp/beamline-bench}
TAG=$1; OLD=$2; NEW=$3; N=${4:-5}
DIR=$(cd "$(dirname "$0")" && pwd)
one() {
    out=$(mktemp -d)
    {
        echo "# worker $2; $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH --worker-bin $2 --scenario sql --duration 5 ${EXTRA:-} --out $out"
    } >"$DIR/$1.log"
    # shellcheck disable=SC2086
    "$BENCH" --worker-bin "$2" --scenario sql --duration 5 ${EXTRA:-} --out "$out" >>"$DIR/$1.log" 2>&1 || echo "# exit $?" >>"$DIR/$1.log"
    cp "$out"/report-*.json "$DIR/$1.json" 2>/dev/null || true
    rm -rf "$out"
}
r=1
while [ $r -le "$N" ]; do
    if [ $((r % 2)) -eq 1 ]; then one $TAG-old-r$r "$OLD"; one $TAG-new-r$r "$NEW"
    else one $TAG-new-r$r "$NEW"; one $TAG-old-r$r "$OLD"; fi
    r=$((r + 1))
done
