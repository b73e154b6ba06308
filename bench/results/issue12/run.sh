#!/bin/sh
# Issue 12 figures: the worker of commit fbf2f2f ("before") and of this commit ("after"),
# driven by the same beamline-bench binary (this commit's: null echo + plain loop + worker,
# interleaved in every run), at the worker's defaults (no RUST_LOG: level info; default pool
# sizes). Each *.log starts with the commit and the exact command; *.json is the bench's
# report of that run.
#
#   BEFORE=/tmp/beamline_worker-fbf2f2f AFTER=target/release/beamline_worker \
#   BENCH=target/release/beamline-bench sh bench/results/issue12/run.sh [names...]
set -eu
BENCH=${BENCH:-target/release/beamline-bench}
BEFORE=${BEFORE:?worker binary built from commit fbf2f2f}
AFTER=${AFTER:-target/release/beamline_worker}
DIR=$(dirname "$0")
COMMIT=$(git rev-parse --short HEAD)

run() {
    name=$1
    shift
    out=$(mktemp -d)
    {
        echo "# commit $COMMIT; $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH $* --out $out"
    } >"$DIR/$name.log"
    "$BENCH" "$@" --out "$out" >>"$DIR/$name.log" 2>&1 || echo "# exit $?" >>"$DIR/$name.log"
    cp "$out"/report-*.json "$DIR/$name.json" 2>/dev/null || true
    rm -rf "$out"
}

want() { [ -z "$ARGS" ] || case " $ARGS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ARGS="$*"

# 1, 2: core fs.get 1 KiB, flat out (window 512): null echo, plain loop, worker.
want fsget-before && run fsget-before --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
want fsget-after && run fsget-after --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
# 3: backlog: 64 vs 2000 in flight.
want window64-after && run window64-after --worker-bin "$AFTER" --scenario fs-get --window 64 --duration 5 --repeat 3 --no-plain
want window2000-after && run window2000-after --worker-bin "$AFTER" --scenario fs-get --window 2000 --duration 5 --repeat 3 --no-plain
# 5: latency at 20 000 tasks/s.
want lat20k-before && run lat20k-before --worker-bin "$BEFORE" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want lat20k-after && run lat20k-after --worker-bin "$AFTER" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
# 6: the other blocks beside the plain loop.
want blocks-after && run blocks-after --worker-bin "$AFTER" --scenario fs-put,http,sql --duration 5 --repeat 3
# The final commit's worker (log writer polling instead of tracing-appender) beside it.
want fsget-final && run fsget-final --worker-bin "${FINAL:?worker binary of the final commit}" --scenario fs-get --duration 5 --repeat 3
exit 0
