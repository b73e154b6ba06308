#!/usr/bin/env bash
# Builds the device check (release) and puts it in gpu/.bin/ (git-ignored), the path a
# device-machine call carries. Run here, from anywhere; see gpu/README.md.
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
