#!/usr/bin/env bash
# Runs fuzz targets for a bounded time, one after the other on one core (libFuzzer's
# default: one process, no -jobs), and minimizes what each found (cargo fuzz cmin).
# The committed corpus (fuzz/corpus/<target>/) is read as seeds and left as it is; new
# inputs go to fuzz/work/<target>/ (not committed; see fuzz/README.md to distill them).
# Usage: fuzz/run.sh [seconds per target, default 300] [targets…]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-300}"
shift || true
targets=("$@")
# Default: every target, as fuzz/Cargo.toml's [[bin]] entries name them.
[ ${#targets[@]} -gt 0 ] ||
  mapfile -t targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && $1 == "name" { gsub(/"/, "", $3); print $3; bin = 0 }' fuzz/Cargo.toml)
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  dict=()
  [ "$t" = assignment ] || dict=(-dict="$PWD/fuzz/job.dict")
  # -timeout: an input that takes a second is a hang; -rss_limit_mb: a leak or a blow-up.
  cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=1 -rss_limit_mb=2048 "${dict[@]}" \
    -print_final_stats=1 > "fuzz/logs/$t.log" 2>&1 || echo "$t: FAILED, see fuzz/logs/$t.log"
  grep -E "INITED|DONE|^stat::|^==[0-9]+==|panicked" "fuzz/logs/$t.log" || true
  cargo +nightly fuzz cmin "$t" "fuzz/work/$t" 2>&1 | tail -n 1
done
