#!/bin/sh
# Issue 12, sixteenth round (2026-11-28): target 6 measured again at the worker's
# defaults: http.request (keep-alive upstream), sql.query (one row) and fs.put beside the
# plain loop, null echo, plain loop and worker in every run (medians of 3 repeats per
# call). Usage: BENCH=/tmp/beamline-bench sh run-blocks.sh NAME WORKER [more bench args]
set -eu
BENCH=${BENCH:-/tmp/beamline-bench}
name=$1
worker=$2
shift 2
DIR=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
{
    echo "# worker $worker; $(date -u +%FT%TZ); $(nproc) CPUs"
    echo "# $BENCH --worker-bin $worker --scenario http,sql,fs-put --duration 5 --repeat 3 $* --out $out"
} >"$DIR/$name.log"
"$BENCH" --worker-bin "$worker" --scenario http,sql,fs-put --duration 5 --repeat 3 "$@" --out "$out" >>"$DIR/$name.log" 2>&1 || echo "# exit $?" >>"$DIR/$name.log"
cp "$out"/report-*.json "$DIR/$name.json" 2>/dev/null || true
rm -rf "$out"
