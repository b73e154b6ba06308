#!/bin/sh
# Issue 12, seventh round (2026-11-28): core fs.get, the worker of 76c53b2 ("before") against
# this round's ("after": the rare paths' futures boxed, so every task's future is smaller
# and its copies shorter; the ack and the result written directly, not through serde).
# Null echo, plain loop and worker in every run, both workers at their defaults (no
# RUST_LOG, default pools), three rounds interleaved; then one JetStream round each. Each
# *.log starts with the commit, the date and the exact command; *.json is the report.
#
# Second step ("fsget-*": the fs.get result written as JSON directly, no `Value`): the
# worker of 69b2bda (the first step, committed) as MID against this step's as AFTER2.
#
# The whole round ("whole-*"): the worker of 76c53b2 as BEFORE against cb1e934's as FINAL.
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-76c53b2 AFTER=/path/beamline_worker-69b2bda \
#       BENCH=target/deb/beamline-bench sh bench/results/issue12-r7/run.sh core-before-r1 ...
#   MID=/path/beamline_worker-69b2bda AFTER2=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench sh bench/results/issue12-r7/run.sh fsget-mid-r1 ...
set -eu
BENCH=${BENCH:?beamline-bench binary}
# run, want, DIR and COMMIT: ../round.sh
. "$(dirname "$0")/../round.sh"

for r in 1 2 3; do
    want core-before-r$r && run core-before-r$r --worker-bin "${BEFORE:?worker of 76c53b2}" --scenario fs-get --duration 5 --repeat 3
    want core-after-r$r && run core-after-r$r --worker-bin "${AFTER:?worker of this round}" --scenario fs-get --duration 5 --repeat 3
done
want js-before && run js-before --worker-bin "${BEFORE:?worker of 76c53b2}" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
want js-after && run js-after --worker-bin "${AFTER:?worker of this round}" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
for r in 1 2 3; do
    want fsget-mid-r$r && run fsget-mid-r$r --worker-bin "${MID:?worker of 69b2bda}" --scenario fs-get --duration 5 --repeat 3
    want fsget-after2-r$r && run fsget-after2-r$r --worker-bin "${AFTER2:?worker of the second step}" --scenario fs-get --duration 5 --repeat 3
done
for r in 1 2 3; do
    want whole-before-r$r && run whole-before-r$r --worker-bin "${BEFORE:?worker of 76c53b2}" --scenario fs-get --duration 5 --repeat 3
    want whole-after-r$r && run whole-after-r$r --worker-bin "${FINAL:?worker of cb1e934}" --scenario fs-get --duration 5 --repeat 3
done
