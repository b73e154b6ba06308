#!/usr/bin/env bash
# Refreshes the committed corpus of each target from what fuzz/run.sh found: the named
# inputs (seed-*, golden-*) stay, and the N largest inputs (at most -max_len, 4 KiB) of an
# edge-only set cover of fuzz/work/<target>/ (libFuzzer -set_cover_merge with counters and
# comparisons off) are added, so the committed corpus stays a few hundred small files.
# Largest, because there the fuzzer built jobs that get past the JSON parser; the
# smallest inputs of the cover mostly reach its error paths (measured: about 1.5× the
# edges of the N smallest).
# Usage: fuzz/distill.sh [N per target, default 40] [targets…]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-40}"
shift || true
targets=("$@")
# Default: every target, as fuzz/Cargo.toml's [[bin]] entries name them.
[ ${#targets[@]} -gt 0 ] ||
  mapfile -t targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && $1 == "name" { gsub(/"/, "", $3); print $3; bin = 0 }' fuzz/Cargo.toml)
bin="${CARGO_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu/release"
for t in "${targets[@]}"; do
  cover=$(mktemp -d)
  "$bin/$t" -set_cover_merge=1 -use_counters=0 -use_cmp=0 "$cover" "fuzz/work/$t" \
    > /dev/null 2>&1
  find "fuzz/corpus/$t" -type f ! -name 'seed-*' ! -name 'golden-*' -delete
  # Largest first; ties by name, so the choice is the same on every machine.
  find "$cover" -type f -printf '%s %f\n' | sort -k1,1nr -k2 | awk -v n="$n" 'NR <= n' |
    while read -r _ f; do cp "$cover/$f" "fuzz/corpus/$t/$f"; done
  echo "$t: $(ls "$cover" | wc -l) inputs cover the edges; corpus now $(ls "fuzz/corpus/$t" | wc -l) files"
  rm -rf "$cover"
done
