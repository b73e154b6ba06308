#!/usr/bin/env bash
# Builds the device check (release) and puts it in gpu/.bin/ (git-ignored), the path a
# device-machine call carries, with the ai.embed model narrowed to F16 in gpu/.bin/models
# (the F32 weights are over the 64 MiB a call carries, and a device machine reaches no
# network; gpu/check.sh widens them back there). Run here, from anywhere; see gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p beamline_gpu --bin beamline-gpu-check --bin beamline-embed-check
target="${CARGO_TARGET_DIR:-target}"
mkdir -p gpu/.bin
for b in beamline-gpu-check beamline-embed-check; do
    cp "$target/release/$b" gpu/.bin/
    strip "gpu/.bin/$b" 2>/dev/null || true
    ls -l "gpu/.bin/$b"
done
carried=gpu/.bin/models/all-MiniLM-L6-v2
if models="$(scripts/ensure-model.sh | tail -n 1)" && [ -f "$models/all-MiniLM-L6-v2/model.safetensors" ]; then
    rm -rf "$carried"
    python3 gpu/scripts/model_f16.py narrow "$models/all-MiniLM-L6-v2" "$carried" >/dev/null
    du -sh "$carried"
else
    echo "no ai.embed model (scripts/ensure-model.sh failed): gpu/check.sh will skip ai.embed on the device" >&2
fi
