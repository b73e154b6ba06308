#!/usr/bin/env bash
# The whole test suite: unit, integration (each test starts its own nats-server -js on a
# free port and its own HTTP/HTTPS servers), both FS backends, the contract fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-nats.sh
# ai.embed's model and the reference's Python packages (cached under ~/.cache/beamline).
BEAMLINE_MODELS_DIR="$(./scripts/ensure-model.sh | tail -n 1)"
export BEAMLINE_MODELS_DIR
# Integration tests start a nats-server and a worker each: two at a time fit 2 cores.
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
