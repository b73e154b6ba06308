#!/bin/sh
# Issue 12, fifth round (2026-11-28): JetStream mode, the dedupe bucket's lookup and store
# through each CPU thread's own lane connection ("after") instead of the control
# connection's thread ("before": de93b19). fs.get flat out, null consumer and worker in
# every run, both workers at their defaults (no RUST_LOG, default pools), three rounds
# interleaved; then core fs.get to see that core mode did not change. Each *.log starts
# with the commit, the date and the exact command; *.json is the bench's report.
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-de93b19 AFTER=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench sh bench/results/issue12-r5/run.sh [names...]
set -eu
BENCH=${BENCH:?beamline-bench binary}
BEFORE=${BEFORE:?worker binary built from commit de93b19}
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
    rm -rf "$out"
}

want() { [ -z "$ARGS" ] || case " $ARGS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ARGS="$*"

for r in 1 2 3; do
    want js-before-r$r && run js-before-r$r --worker-bin "$BEFORE" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
    want js-after-r$r && run js-after-r$r --worker-bin "$AFTER" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
done
for r in 1 2; do
    want core-before-r$r && run core-before-r$r --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
    want core-after-r$r && run core-after-r$r --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
done
