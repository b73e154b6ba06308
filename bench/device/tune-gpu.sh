#!/usr/bin/env bash
# Device recheck, written 2026-11-28 after be3144f; first run on an H200 on 2026-11-28 at
# 958679a (bench/results/device-h200-2026-11-28-second/README.md). Checks that `tune` on a
# GPU host writes a GPU pool into its profile (the first device run's tune did not), the
# worker started with that profile uses the GPU, then core/JetStream fs.get at the worker's
# defaults on 16 cores: flat out, at 20 000 tasks/s (latency) and with 64 vs 2 000 in
# flight. About 4 minutes (228 s there).
# Carry bench/device/.bin (stripped deb binaries and nats-server, as run.sh's header says).
#   bash bench/device/tune-gpu.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:?out dir}"
bin=bench/device/.bin
export PATH="$PWD/$bin/nats/usr/sbin:$PWD/$bin:$PATH"
log="$out/tune-gpu.log"
say() { echo "[$(date -u +%T)] $*" | tee -a "$log"; }
w=/tmp/tg; rm -rf "$w"; mkdir -p "$w"
say "tune, 100 s, fs-get only (default --gpu-pool-size: one per GPU, at least two)"
timeout 150 "$bin/beamline-bench" tune --budget-minutes 1.6 --duration 2 --scenario fs-get \
  --worker-bin "$bin/beamline_worker" --out "$w/tune" --profile-out "$w/tuned.toml" >>"$log" 2>&1 || say "tune rc $?"
cp "$w/tuned.toml" "$out/tuned.toml" 2>/dev/null
say "plan with the tuned profile"
timeout 20 "$bin/beamline_worker" plan --profile "$w/tuned.toml" >>"$log" 2>&1 || say "plan rc $?"
say "ai.inference through NATS with the tuned profile (no --gpu-pool-size given)"
timeout 60 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --profile "$w/tuned.toml" \
  --scenario inference --duration 8 --out "$w/inf" >>"$log" 2>&1 || say "inference bench rc $?"
grep -h "GPU in use\|no GPU in use" "$w"/inf/logs/*worker* | head -2 >>"$log" 2>/dev/null || say "no GPU line"
cp "$w"/inf/report-*.json "$out/inference.json" 2>/dev/null
say "core fs.get, defaults, 5 s x 2"
timeout 70 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get --duration 5 --repeat 2 \
  --out "$w/core" >>"$log" 2>&1 || say "core bench rc $?"
cp "$w"/core/report-*.json "$out/core-fsget.json" 2>/dev/null
say "core fs.get at 20 000 tasks/s (issue 12 target 5: publish -> result p99), defaults, 5 s x 2"
timeout 70 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get --rate 20000 --duration 5 --repeat 2 \
  --out "$w/lat" >>"$log" 2>&1 || say "latency bench rc $?"
cp "$w"/lat/report-*.json "$out/core-fsget-20k.json" 2>/dev/null
for win in 64 2000; do
  say "core fs.get with $win in flight (issue 12 target 3), defaults, 5 s"
  timeout 60 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --scenario fs-get --window "$win" --duration 5 --no-plain \
    --out "$w/win$win" >>"$log" 2>&1 || say "window $win bench rc $?"
  cp "$w"/win$win/report-*.json "$out/core-fsget-win$win.json" 2>/dev/null
done
say "JetStream fs.get, defaults, 5 s x 2"
timeout 70 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" --mode jetstream --scenario fs-get --duration 5 --repeat 2 --no-plain \
  --out "$w/js" >>"$log" 2>&1 || say "js bench rc $?"
cp "$w"/js/report-*.json "$out/js-fsget.json" 2>/dev/null
say done
