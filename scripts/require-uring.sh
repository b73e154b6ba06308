#!/usr/bin/env bash
# Sourced by .ci/run: exports BEAMLINE_IO_REQUIRE_URING=1 when io_uring works on this
# machine, so that the io_uring variants of the IO tests (io/tests/fs.rs reads it) fail
# instead of skipping there. The probe is examples/uring_probe.rs (the IO pool's own
# start-up probe); its path may be given in URING_PROBE, else it is built here.
# Where io_uring is unusable (old kernel, seccomp, sysctl) the variable is left unset and
# those tests skip with a message, as before.
probe="${URING_PROBE:-}"
if [ -z "$probe" ]; then
  cargo build --quiet --example uring_probe
  probe="${CARGO_TARGET_DIR:-target}/debug/examples/uring_probe"
fi
if "$probe"; then
  export BEAMLINE_IO_REQUIRE_URING=1
  echo "== io_uring works here: BEAMLINE_IO_REQUIRE_URING=1 (io_uring tests may not skip)"
else
  unset BEAMLINE_IO_REQUIRE_URING
  echo "== io_uring unusable here: its tests skip"
fi
