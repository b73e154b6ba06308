#!/bin/sh
# Issue 12, third round (2026-11-27): http.request and sql.query beside the plain loop,
# the worker of 48ce513 ("before") and of this round ("after", 6598f57: the HTTP idle
# pool and the SQL name lookup), driven by the bench binary of this checkout, both at the
# worker's defaults (no RUST_LOG, default pools). Three rounds, before and after
# interleaved. Each *.log starts with the commit, the date and the exact command; *.json
# is the bench's report of that run. The helper is issue12-r2/run.sh's (each results
# directory keeps its own script so it can be rerun as it was).
#
#   cargo build --profile deb -p beamline_worker -p beamline-bench   # in each checkout
#   BEFORE=/path/beamline_worker-48ce513 AFTER=target/deb/beamline_worker \
#       BENCH=target/deb/beamline-bench \
#       sh bench/results/issue12-r3/run.sh [names...]
set -eu
BENCH=${BENCH:?beamline-bench binary}
BEFORE=${BEFORE:?worker binary built from commit 48ce513}
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

# Target 6: http.request (keep-alive upstream) and sql.query (one row) beside the plain
# loop; null echo, plain loop and worker in every run.
for r in 1 2 3; do
    want blocks-before-r$r && run blocks-before-r$r --worker-bin "$BEFORE" --scenario http,sql --duration 5 --repeat 3
    want blocks-after-r$r && run blocks-after-r$r --worker-bin "$AFTER" --scenario http,sql --duration 5 --repeat 3
done
# Target 5 beside the plain loop: fs.get at 20 000/s offered, null echo, plain loop and
# worker in each run (the second round's lat20k ran without the plain loop).
want lat20k-after && run lat20k-after --worker-bin "$AFTER" --scenario fs-get --rate 20000 --duration 5 --repeat 3
# Target 5, a fresh worker's first run: THP off and the dedupe store pre-sized. "before"
# here = the worker of 6598f57 (BEFORE_THP), "after" = AFTER_THP; each bench call starts a
# fresh worker, so run #1 of each log is a fresh process's first 5 s under load. Then the
# CPU per fs.get task flat out, the same two workers, to see that nothing got dearer.
for r in 1 2; do
    want thp-before-r$r && run thp-before-r$r --worker-bin "${BEFORE_THP:?worker of 6598f57}" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
    want thp-after-r$r && run thp-after-r$r --worker-bin "${AFTER_THP:?worker of this commit}" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
done
for r in 1 2; do
    want flat-before-r$r && run flat-before-r$r --worker-bin "${BEFORE_THP:?}" --scenario fs-get --duration 5 --repeat 3
    want flat-after-r$r && run flat-after-r$r --worker-bin "${AFTER_THP:?}" --scenario fs-get --duration 5 --repeat 3
done
# Target 4 as it stands (not worked on): JetStream fs.get beside the JetStream null
# consumer, the worker of this round.
want jetstream-after && run jetstream-after --worker-bin "${AFTER_THP:?}" --mode jetstream --scenario fs-get --duration 5 --repeat 3 --no-plain
# The round's last worker (FINAL: the dedupe map with room for twice its entries), once
# at 20 000/s and once flat out beside the plain loop.
want final-lat20k && run final-lat20k --worker-bin "${FINAL:?worker of the round's last commit}" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want final-flat && run final-flat --worker-bin "${FINAL:?}" --scenario fs-get --duration 5 --repeat 3
# Target 5, what the first-run tail comes from (each call a fresh worker of 6598f57 =
# BEFORE_THP; PRESIZED = a worker with only the dedupe map pre-sized for its entry cap):
# the worker as it is, with a 1-s dedupe TTL (the store stops growing), at RUST_LOG=warn,
# with unpinned threads, with MIMALLOC_ALLOW_THP=0, and the pre-sized one.
want why-as-is && run why-as-is --worker-bin "${BEFORE_THP:?}" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want why-ttl1 && run why-ttl1 --worker-bin "${BEFORE_THP:?}" --worker-arg=--dedupe-ttl-s=1 --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want why-warn && run why-warn --worker-bin "${BEFORE_THP:?}" --worker-rust-log warn --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want why-unpinned && run why-unpinned --worker-bin "${BEFORE_THP:?}" --worker-arg=--profile="$DIR/unpinned.toml" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want why-nothp && WORKER="${BEFORE_THP:?}" run why-nothp --worker-bin "$DIR/nothp.sh" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
want why-presized && run why-presized --worker-bin "${PRESIZED:?worker with only the dedupe map pre-sized}" --scenario fs-get --rate 20000 --duration 5 --repeat 3 --no-plain
exit 0
