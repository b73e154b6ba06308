#!/usr/bin/env bash
# The answers-over-max_payload tests and the DLQ probe, with the working tree as it is.
# With `before`: the worker's sources as at 4e7acf3 (before the change) for the run.
# From the repository root: bash bench/results/issue12-r18/answers.sh [before]
set -u
d=bench/results/issue12-r18
files="src/contract/mod.rs src/contract/wire.rs src/contract/error.rs src/contract/assignment.rs src/runtime/pipeline.rs"
if [ "${1:-}" = before ]; then
  mkdir -p /tmp/answers-keep && cp --parents $files /tmp/answers-keep/
  for f in $files; do git show 4e7acf3:$f > $f; done
fi
cp $d/dlq_probe.rs tests/dlq_probe.rs
echo "# $(git rev-parse --short HEAD), sources: ${1:-as in the tree}"
cargo test -p beamline_worker --test e2e_contract -- dlq_entries large_values 2>&1 \
  | grep -vE "^\s+(Compiling|Finished|Running)|^\s*[0-9]+: |^\s+at "
cargo test -p beamline_worker --test dlq_probe -- --nocapture 2>&1 \
  | grep -vE "^\s+(Compiling|Finished|Running)|^\s*[0-9]+: |^\s+at "
rm -f tests/dlq_probe.rs
if [ "${1:-}" = before ]; then
  (cd /tmp/answers-keep && cp --parents $files /work/main/) && rm -rf /tmp/answers-keep
fi
