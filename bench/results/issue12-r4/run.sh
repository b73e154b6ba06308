#!/bin/sh
# Issue 12, fourth round (2026-11-27): fs.put beside the plain loop, the worker of 524aa9f
# ("before": a fresh temp file per put, renamed over the target) and of this round
# ("after": small overwrites written into a claimed, leased spare from the pool beside the
# tenant roots and exchanged with the target, io/src/spare.rs), driven by the bench binary
# of this checkout, both at the worker's
# defaults (no RUST_LOG, default pools). Three rounds, before and after interleaved; then
# fs.get flat out with both workers, to see that the gets did not get dearer. Each *.log
# starts with the commit, the date and the exact command; *.json is the bench's report of
# that run. The helper is issue12-r3/run.sh's (each results directory keeps its own script
# so it can be rerun as it was).
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-524aa9f AFTER=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench \
#       sh bench/results/issue12-r4/run.sh [names...]
set -eu
BENCH=${BENCH:?beamline-bench binary}
BEFORE=${BEFORE:?worker binary built from commit 524aa9f}
AFTER=${AFTER:?worker binary of this round}
# run, want, DIR and COMMIT: ../round.sh
. "$(dirname "$0")/../round.sh"

# Target 6, fs.put (a ~200-byte JSON document to one of 4 096 files, each overwritten
# again and again): null echo, plain loop and worker in every run.
for r in 1 2 3; do
    want put-before-r$r && run put-before-r$r --worker-bin "$BEFORE" --scenario fs-put --duration 5 --repeat 3
    want put-after-r$r && run put-after-r$r --worker-bin "$AFTER" --scenario fs-put --duration 5 --repeat 3
done
# The gets, to see that they did not get dearer.
for r in 1 2 3; do
    want get-before-r$r && run get-before-r$r --worker-bin "$BEFORE" --scenario fs-get --duration 5 --repeat 3
    want get-after-r$r && run get-after-r$r --worker-bin "$AFTER" --scenario fs-get --duration 5 --repeat 3
done
# The pool's size: a worker built with SLOTS = 16 384 (SLOTS16K) against this round's
# (4 096), back to back.
want slots16k && run slots16k --worker-bin "${SLOTS16K:?worker built with SLOTS = 16384}" --scenario fs-put --duration 5 --repeat 3
want slots4k && run slots4k --worker-bin "$AFTER" --scenario fs-put --duration 5 --repeat 3
# System calls per put, counted by perf stat over 3 s of a busy worker (statwrap.sh).
for w in before after; do
    if want syscalls-put-$w; then
        bin=$BEFORE; [ $w = after ] && bin=$AFTER
        out="$DIR/syscalls-put-$w.txt"
        echo "# perf stat -p <worker pid> -- sleep 3 during: beamline-bench --worker-bin statwrap.sh --scenario fs-put --duration 6 --repeat 1 --no-plain; worker: $w ($bin); $(date -u +%FT%TZ)" >"$out.head"
        WORKER=$bin STAT_OUT="$out.perf" "$BENCH" --worker-bin "$DIR/statwrap.sh" --scenario fs-put --duration 6 --repeat 1 --no-plain --out "$(mktemp -d)" >/dev/null 2>&1 || true
        cat "$out.head" "$out.perf" >"$out" && rm -f "$out.head" "$out.perf"
    fi
done
exit 0
