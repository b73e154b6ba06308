//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the minimized inputs that once
//! broke a target (`fuzz/regressions/<target>/`) through the fuzz targets' own checks, so
//! CI holds every finding without nightly or cargo-fuzz. The targets come from the block
//! registry: `assignment`, then `job_<block>` for each block (`BlockKind::block`), and a
//! block without its target, `[[bin]]` or corpus fails here.

use std::path::{Path, PathBuf};

use beamline_worker::blocks::BlockKind;

#[path = "../fuzz/fuzz_targets/check.rs"]
mod check;

use check::Target;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `assignment`, then one `job_<block>` per block; the block's first kind stands for the
/// others (they share its decoder).
fn targets() -> Vec<(String, Target)> {
    let mut targets = vec![("assignment".to_owned(), Target::Assignment)];
    for kind in BlockKind::ALL {
        let name = format!("job_{}", kind.block());
        if !targets.iter().any(|(known, _)| *known == name) {
            targets.push((name, Target::Job(kind)));
        }
    }
    targets
}

/// Feeds every file under `dir/<target>/` to its target; returns how many there were.
fn replay(dir: &str) -> usize {
    let root = fuzz_dir().join(dir);
    let mut count = 0;
    for (name, target) in targets() {
        let Ok(entries) = std::fs::read_dir(root.join(&name)) else {
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

/// cargo-fuzz wants one file per target: each block has `fuzz_targets/job_<block>.rs`
/// (feeding one of the block's kinds), a `[[bin]]` for it in `fuzz/Cargo.toml`, and a
/// corpus to start from.
#[test]
fn every_block_has_a_fuzz_target_a_bin_and_a_corpus() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    let manifest: toml::Table = manifest.parse().expect("fuzz/Cargo.toml is TOML");
    let bins = manifest["bin"].as_array().expect("[[bin]] entries");
    for (name, target) in targets() {
        let path = format!("fuzz_targets/{name}.rs");
        let bin = bins.iter().find(|b| b["name"].as_str() == Some(&name));
        let bin = bin.unwrap_or_else(|| panic!("fuzz/Cargo.toml has no [[bin]] {name}"));
        assert_eq!(bin["path"].as_str(), Some(path.as_str()), "[[bin]] {name}");
        let source = std::fs::read_to_string(fuzz_dir().join(&path))
            .unwrap_or_else(|e| panic!("fuzz/{path}: {e}"));
        if let Target::Job(kind) = target {
            let feeds = BlockKind::ALL
                .iter()
                .filter(|k| k.block() == kind.block())
                .any(|k| source.contains(&format!("BlockKind::{k:?}")));
            assert!(feeds, "fuzz/{path} feeds no kind of block {}", kind.block());
        }
        let corpus = std::fs::read_dir(fuzz_dir().join("corpus").join(&name))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(corpus > 0, "fuzz/corpus/{name}/ is missing or empty");
    }
}
