# Sourced by the device scripts (lanes.sh, sweep-16c.sh, follow.sh) with the out dir and the log's
# name: `. "$(dirname "$0")/lib.sh" "${1:-}" NAME.log`. Goes to the repo root, puts the
# carried binaries and nats-server (bench/device/.bin, as run.sh's header says) on PATH,
# makes the out dir and a scratch dir $w, and defines `say`, `bench` and `pack`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
out="${1:?out dir}"
mkdir -p "$out"
bin=bench/device/.bin
export PATH="$PWD/$bin/nats/usr/sbin:$PWD/$bin:$PATH"
log="$out/$2"
w="/tmp/$(basename "$2" .log)"
rm -rf "$w"
mkdir -p "$w"
say() { echo "[$(date -u +%T)] $*" | tee -a "$log"; }
# bench NAME SECONDS ARGS...: one core fs.get bench of 5 s (ARGS added) into $w/NAME,
# killed after SECONDS; its output goes to the log.
bench() {
  local name=$1 limit=$2
  shift 2
  say "$name: $*"
  timeout "$limit" "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get \
    --duration 5 --no-plain --out "$w/$name" "$@" >>"$log" 2>&1 || say "$name rc $?"
}
# pack ARCHIVE [FILES...]: every run's report as NAME.json, and FILES from $w, into
# $out/ARCHIVE (a call brings back at most 8 files).
pack() {
  local archive=$1 d n f
  shift
  for d in "$w"/*/; do
    n=$(basename "$d")
    for f in "$d"report-*.json; do cp "$f" "$w/$n.json"; done
  done
  tar czf "$out/$archive" -C "$w" $(cd "$w" && ls -- *.json) "$@"
}
