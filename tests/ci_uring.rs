//! `.ci/run` sets `BEAMLINE_IO_REQUIRE_URING=1` where io_uring works, so the io_uring
//! tests cannot pass by skipping (issue 13, item 11). Runs the real script with the real
//! probe binary and compares with the IO pool's probe in this process.

use std::path::Path;
use std::process::Command;

use beamline_testkit::worker::example_bin;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `examples/uring_probe`, built by this test's cargo (kit's `example_bin`).
fn probe_binary() -> String {
    example_bin("uring_probe")
        .to_str()
        .expect("utf8 path")
        .to_owned()
}

/// What `BEAMLINE_IO_REQUIRE_URING` is after sourcing the script with `probe`.
fn required_after_sourcing(probe: &str) -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            r#"set -euo pipefail; . ./scripts/require-uring.sh >/dev/null; printf %s "${BEAMLINE_IO_REQUIRE_URING-unset}""#,
        ])
        .current_dir(ROOT)
        .env("URING_PROBE", probe)
        .env_remove("BEAMLINE_IO_REQUIRE_URING")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "sourcing scripts/require-uring.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn io_uring_is_required_exactly_where_it_works() {
    let works = beamline_io::probe_uring().is_ok();
    let probe = probe_binary();
    let st = Command::new(&probe).status().expect("probe runs");
    assert_eq!(
        st.success(),
        works,
        "the probe binary disagrees with probe_uring()"
    );
    assert_eq!(
        required_after_sourcing(&probe),
        if works { "1" } else { "unset" },
        "io_uring works here: {works}"
    );
    // A machine where the probe fails: left unset (its io_uring tests skip).
    assert_eq!(required_after_sourcing("/bin/false"), "unset");
}

#[test]
fn ci_sources_the_check_before_running_the_tests() {
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).expect(".ci/run");
    let lines: Vec<&str> = ci.lines().map(str::trim).collect();
    let source = lines
        .iter()
        .position(|l| *l == ". ./scripts/require-uring.sh")
        .expect(".ci/run sources scripts/require-uring.sh");
    let tests = lines
        .iter()
        .position(|l| l.starts_with("./scripts/test.sh"))
        .expect(".ci/run runs scripts/test.sh");
    assert!(
        source < tests,
        "the variable must be set before the tests run"
    );
}
