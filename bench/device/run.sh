#!/usr/bin/env bash
# Device run for a GPU host (issue 10 part 5; the 16-core one-GPU class of
# tuning/host-16c-1gpu.toml). About 4 minutes without the GPU check, 6 with it.
# Run on an H200 on 2026-11-28: bench/results/device-h200-2026-11-28/README.md.
#
# Prepare here (no network on the device machine):
#   cargo build --profile deb -p beamline_worker -p beamline-bench
#   mkdir -p bench/device/.bin && cp target/deb/beamline_worker target/deb/beamline-bench bench/device/.bin/
#   strip bench/device/.bin/*          # the deb profile keeps debug info: 37 MB stripped, all in
#   (cd bench/device/.bin && apt-get download nats-server && dpkg -x nats-server_*.deb nats && rm nats-server_*.deb)
#   gpu/build-check.sh                      # gpu/.bin/beamline-gpu-check
# then on the device, carrying bench/device/.bin and gpu/.bin (the model in gpu/.bin/models
# takes the two over 64 MiB together: run gpu/check.sh in a call of its own first):
#   SKIP_GPU_CHECK=1 bench/device/run.sh /tmp/dr
#   tar czf "$OUT/device-run.tgz" --exclude='bench/logs' --exclude='*.log' -C /tmp/dr .; cp /tmp/dr/run.log "$OUT"
# A call brings back at most 8 files of 16 MiB: the worker logs of the tune (1.6 GB at the
# default log level on 16 cores) and of the bench stay behind.
# Writes OUT/plan.txt, plan.json, tune/ + the tuned profile, gpu-check.*, bench/, run.log.
# Then, same carry: bench/device/tune-gpu.sh "$OUT" (tune's GPU pool on the device; not yet
# run on one).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/results/device}}"
mkdir -p "$out"
bin=bench/device/.bin
export PATH="$PWD/$bin/nats/usr/sbin:$PWD/$bin:$PATH"
log="$out/run.log"
say() { echo "[$(date -u +%T)] $*" | tee -a "$log"; }
command -v nats-server >/dev/null || { say "no nats-server under $bin/nats (dpkg -x)"; exit 2; }
[ -x "$bin/beamline_worker" ] && [ -x "$bin/beamline-bench" ] || { say "missing binaries in $bin"; exit 2; }
nvidia-smi -L >>"$log" 2>&1 || say "nvidia-smi not found (driver check failed)"

say "plan (computed defaults, then the 16c-1GPU profile) on this host"
timeout 20 "$bin/beamline_worker" plan --gpu-pool-size 2 | tee "$out/plan-defaults.txt" >>"$log"
timeout 20 "$bin/beamline_worker" plan --profile tuning/host-16c-1gpu.toml | tee "$out/plan.txt" >>"$log"
timeout 20 "$bin/beamline_worker" plan --json --profile tuning/host-16c-1gpu.toml >"$out/plan.json"
scripts/capture-sysfs.sh "$out/sysfs" >>"$log" 2>&1

say "tune: 3 minutes"
timeout 240 "$bin/beamline-bench" tune --budget-minutes 3 --duration 3 \
  --worker-bin "$bin/beamline_worker" --out "$out/tune" \
  --profile-out "$out/tuned-16c-1gpu.toml" >>"$log" 2>&1 || say "tune failed (rc $?)"

if [ -n "${SKIP_GPU_CHECK:-}" ]; then
  say "GPU pool check skipped (SKIP_GPU_CHECK: gpu/check.sh ran in a call of its own)"
else
  say "GPU pool check (agreement + inference bench, gpu/check.sh)"
  timeout 250 gpu/check.sh "$out" >>"$log" 2>&1 || say "gpu/check.sh failed (rc $?)"
fi

# End to end through NATS: only when the bench has an inference scenario.
if "$bin/beamline-bench" --help 2>/dev/null | grep -qi inference; then
  say "bench: ai.inference through NATS on the GPU"
  timeout 90 "$bin/beamline-bench" --worker-bin "$bin/beamline_worker" \
    --profile tuning/host-16c-1gpu.toml --scenario inference --duration 20 \
    --out "$out/bench" >>"$log" 2>&1 || say "bench failed (rc $?)"
  # The profile sizes the GPU pool (gpu_pool_size = 2); the worker log says GPU or CPU fallback.
  grep -h "GPU in use\|no GPU in use\|GPU batch failed" "$out"/bench/logs/*worker* >>"$log" 2>/dev/null \
    || say "no GPU line in the worker log"
else
  say "beamline-bench has no ai.inference scenario: end-to-end inference bench not run"
fi
say "done"
