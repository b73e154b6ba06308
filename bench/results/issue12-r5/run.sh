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
# run, want, DIR and COMMIT: ../round.sh
. "$(dirname "$0")/../round.sh"

for r in 1 2 3; do
    want js-before-r$r && run js-before-r$r --worker-bin "$BEFORE" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
    want js-after-r$r && run js-after-r$r --worker-bin "$AFTER" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
done
for r in 1 2; do
    want core-before-r$r && run core-before-r$r --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
    want core-after-r$r && run core-after-r$r --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
done
