//! `examples/demo.rs` (what `scripts/run-local.sh`, the README's first command, runs)
//! exits 0 only when every example assignment got an accepted ack and a success result
//! with its ids, and exits non-zero naming the failure otherwise (issue 13, item 10).
//! Real nats-server, real worker binary, the real example binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use beamline_testkit::prelude::{Nats, Worker};
use beamline_testkit::worker::example_bin;

/// The example binary, built by this test's cargo (kit's `example_bin`).
fn demo_binary() -> PathBuf {
    example_bin("demo")
}

fn run_demo(nats: &Nats, sql_root: &Path) -> Output {
    Command::new(demo_binary())
        .env("NATS_URL", nats.url())
        .env("DEMO_SQL_ROOT", sql_root)
        .output()
        .expect("demo runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_exits_zero_when_every_assignment_succeeds() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url()).start();
    let out = run_demo(&nats, &worker.sql_root);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "demo failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nworker log:\n{}",
        out.status,
        worker.logs()
    );
    assert!(
        stdout.contains("6 example assignments: 6 accepted acks and 6 success results"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("<- result ").count(), 6, "{stdout}");
    assert!(!stderr.contains("FAILED"), "{stderr}");
}

/// The demo creates the SQL example's database where it is told (`DEMO_SQL_ROOT`); a
/// worker whose `--sql-root` is elsewhere answers that one job with 2002. The other five
/// succeed; the demo must still fail, and say which.
#[test]
fn the_demo_exits_non_zero_when_one_assignment_fails() {
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url()).start();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = run_demo(&nats, elsewhere.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "demo should fail\nstdout:\n{stdout}\nstderr:\n{stderr}\nworker log:\n{}",
        worker.logs()
    );
    assert!(
        stderr.contains("FAILED: assignment 4 (sql.query")
            && stderr.contains("result status \"error\"")
            && stderr.contains("2002"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FAILED: 1 problem(s) in 6 example assignments"),
        "{stderr}"
    );
    assert!(!stdout.contains("6 accepted acks"), "{stdout}");
    // The five others were answered and printed.
    assert_eq!(stdout.matches("<- result ").count(), 6, "{stdout}");
}
