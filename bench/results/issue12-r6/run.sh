#!/bin/sh
# Issue 12, sixth round (2026-11-28): core fs.get, the worker of b2ec37e ("before") against
# this round's ("after": a log line's and a span's fields recorded into one reused buffer
# each, spans and fields collected inline; a kept tenant root given back to its entry).
# Null echo, plain loop and worker in every run, both workers at their defaults (no
# RUST_LOG, default pools), three rounds interleaved; then one JetStream round each. Each
# *.log starts with the commit, the date and the exact command; *.json is the report.
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-b2ec37e AFTER=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench sh bench/results/issue12-r6/run.sh [names...]
set -eu
BENCH=${BENCH:?beamline-bench binary}
BEFORE=${BEFORE:?worker binary built from commit b2ec37e}
AFTER=${AFTER:?worker binary of this round}
# run, want, DIR and COMMIT: ../round.sh
. "$(dirname "$0")/../round.sh"

for r in 1 2 3; do
    want core-before-r$r && run core-before-r$r --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
    want core-after-r$r && run core-after-r$r --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
done
want js-before && run js-before --worker-bin "$BEFORE" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
want js-after && run js-after --worker-bin "$AFTER" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
