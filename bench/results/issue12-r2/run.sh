#!/bin/sh
# Issue 12, second round (2026-11-27): the worker of c56eab1 ("before") and of this
# round's last worker commit ("after"), driven by the bench binary of this checkout, both
# at the worker's defaults (no RUST_LOG, default pools). Each *.log starts with the commit, the
# date and the exact command; *.json is the bench's report of that run.
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-c56eab1 AFTER=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench \
#       sh bench/results/issue12-r2/run.sh [names...]
set -eu
BENCH=${BENCH:?beamline-bench binary}
BEFORE=${BEFORE:?worker binary built from commit c56eab1}
AFTER=${AFTER:?worker binary of this round}
DIR=$(cd "$(dirname "$0")" && pwd)
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
    cp "$out"/latency-*.svg "$DIR/$name.svg" 2>/dev/null || true
    rm -rf "$out"
}

want() { [ -z "$ARGS" ] || case " $ARGS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ARGS="$*"

# Targets 1, 2: core fs.get 1 KiB flat out (window 512), null echo + plain loop + worker;
# before and after interleaved, three rounds.
for r in 1 2 3; do
    want fsget-before-r$r && run fsget-before-r$r --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
    want fsget-after-r$r && run fsget-after-r$r --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
done
# Target 3: backlog (64 vs 2000 in flight) and 1 000 000 tasks in one process, sampled.
want window64-after && run window64-after --worker-bin "$AFTER" --scenario fs-get --window 64 --duration 5 --repeat 3 --no-plain
want window2000-after && run window2000-after --worker-bin "$AFTER" --scenario fs-get --window 2000 --duration 5 --repeat 3 --no-plain
if want million-after; then
    rm -f "$DIR/million-after.samples"
    WORKER="$AFTER" SAMPLES="$DIR/million-after.samples" \
        run million-after --worker-bin "$DIR/sample.sh" --scenario fs-get --count 1000000 --repeat 1 --no-plain
    python3 "$DIR/segments.py" "$DIR/million-after.samples" "$DIR/million-after-segments.svg" >"$DIR/million-after.segments"
fi
# Target 5: latency at 20 000 tasks/s offered.
want lat20k-after && run lat20k-after --worker-bin "$AFTER" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
# Target 4 (not attempted; the figure as it stands): JetStream fs.get beside the
# JetStream null consumer, before and after.
want jetstream-before && run jetstream-before --worker-bin "$BEFORE" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
want jetstream-after && run jetstream-after --worker-bin "$AFTER" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
# Target 6: the other blocks beside the plain loop.
want blocks-after && run blocks-after --worker-bin "$AFTER" --scenario fs-put,http,sql --duration 5 --repeat 3
exit 0
