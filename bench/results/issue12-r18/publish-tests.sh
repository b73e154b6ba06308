#!/usr/bin/env bash
# The new publisher tests and e2e_fs, with the working tree as it is. From the repository root.
set -u
echo "# commit $(git rev-parse --short HEAD), publish.rs $(git diff --quiet HEAD -- src/transport/publish.rs && echo as-committed || echo changed)"
cargo test -p beamline_worker --test publish --test e2e_fs 2>&1 | grep -vE "^\s+(Compiling|Finished|Running)|^\s*[0-9]+: |^\s+at "
