//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the minimized inputs that once
//! broke a target (`fuzz/regressions/<target>/`) through the fuzz targets' own checks, so
//! CI holds every finding without nightly or cargo-fuzz.

use std::path::Path;

use beamline_worker::blocks::BlockKind;

#[path = "../fuzz/fuzz_targets/check.rs"]
mod check;

use check::Target;

const TARGETS: [(&str, Target); 7] = [
    ("assignment", Target::Assignment),
    ("job_http", Target::Job(BlockKind::Http)),
    ("job_fs", Target::Job(BlockKind::FsPut)),
    ("job_sql", Target::Job(BlockKind::Sql)),
    ("job_human", Target::Job(BlockKind::Human)),
    ("job_inference", Target::Job(BlockKind::Inference)),
    ("job_embed", Target::Job(BlockKind::Embed)),
];

/// Feeds every file under `dir/<target>/` to its target; returns how many there were.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut count = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("readable input");
            // A panic names the input, so the failing file is the test's message.
            let run = std::panic::catch_unwind(|| check::check(target, &data));
            assert!(run.is_ok(), "{name} fails on {}", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_corpus_input_passes_its_target() {
    let n = replay("corpus");
    assert!(n > 0, "no corpus found under fuzz/corpus");
    eprintln!("replayed {n} corpus inputs");
}

#[test]
fn every_regression_input_passes_its_target() {
    let n = replay("regressions");
    assert!(n > 0, "no regression input found under fuzz/regressions");
    eprintln!("replayed {n} regression inputs");
}
