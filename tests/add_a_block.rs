//! Keeps "How to add a block" (its section in `docs/ARCHITECTURE.md`) true: every kind of
//! the block registry is in the places the registry does not generate, and the section
//! names only paths that exist. The fuzz targets and the decoder properties are checked
//! where they live (`tests/fuzz_replay.rs`, `tests/decoder_props.rs`).

use std::path::Path;

use beamline_worker::blocks::{BlockKind, Pool};
use beamline_worker::contract::Status;
use beamline_worker::telemetry::Metrics;

const HEADING: &str = "How to add a block";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The section under the "How to add a block" heading, down to the next heading of the
/// same or a higher level, and the file it is in.
fn section() -> (&'static str, String) {
    for path in ["docs/ARCHITECTURE.md"] {
        let Ok(text) = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        else {
            continue;
        };
        let mut lines = text.lines();
        let Some(heading) = lines.find(|l| l.starts_with('#') && l.contains(HEADING)) else {
            continue;
        };
        let level = heading.chars().take_while(|c| *c == '#').count();
        let ends =
            |l: &&str| l.starts_with('#') && l.chars().take_while(|c| *c == '#').count() <= level;
        let body: Vec<&str> = lines.take_while(|l| !ends(l)).collect();
        return (path, body.join("\n"));
    }
    panic!("no \"{HEADING}\" section in docs/ARCHITECTURE.md");
}

/// The row of the section's table of blocks that names `kind`.
fn table_row(section: &str, kind: BlockKind) -> Option<&str> {
    let variant = format!("| `{kind:?}` |");
    section.lines().find(|l| l.starts_with(&variant))
}

#[test]
fn the_section_has_one_row_per_kind_saying_what_the_registry_says() {
    let (path, section) = section();
    for kind in BlockKind::ALL {
        let row = table_row(&section, kind)
            .unwrap_or_else(|| panic!("{path}: no row for {kind:?} ({})", kind.as_str()));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "", kind, job.type (aliases), pool, module, ""
        assert_eq!(cells.len(), 6, "{path}: {row}");
        let mut names = format!("`{}`", kind.as_str());
        if !kind.aliases().is_empty() {
            let aliases: Vec<String> = kind.aliases().iter().map(|a| format!("`{a}`")).collect();
            names = format!("{names} ({})", aliases.join(", "));
        }
        assert_eq!(cells[2], names, "{path}: names of {kind:?}");
        assert_eq!(cells[3], kind.pool().as_str(), "{path}: pool of {kind:?}");
        assert_eq!(
            cells[4],
            format!("`{}.rs`", kind.block()),
            "{path}: module of {kind:?}"
        );
    }
    let rows = section.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        BlockKind::COUNT,
        "{path}: a row for a kind that is not in the registry"
    );
}

#[test]
fn the_section_names_only_paths_that_exist() {
    let (path, section) = section();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for quoted in section.split('`').skip(1).step_by(2) {
        let is_path = ["src/", "tests/", "fuzz/", "docs/"]
            .iter()
            .any(|dir| quoted.starts_with(dir))
            || quoted == "README.md";
        // `<block>` stands for any block (checked per block by the other tests), `*` for
        // a pattern.
        if !is_path || quoted.contains(['<', '*']) {
            continue;
        }
        assert!(
            root.join(quoted).exists(),
            "{path} names {quoted}, which does not exist"
        );
        checked += 1;
    }
    assert!(checked > 0, "{path}: the section names no path");
}

#[test]
fn every_block_has_its_module_and_a_line_in_the_code_map() {
    let map = read("docs/ARCHITECTURE.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for kind in BlockKind::ALL {
        let file = format!("{}.rs", kind.block());
        assert!(
            root.join("src/blocks").join(&file).exists(),
            "src/blocks/{file} missing"
        );
        assert!(
            map.contains(&format!("`{file}`")),
            "docs/ARCHITECTURE.md's code map does not name `{file}`"
        );
    }
}

#[test]
fn every_kind_is_in_the_readme_block_list() {
    let readme = read("README.md");
    for kind in BlockKind::ALL {
        let name = format!("`{}`", kind.as_str());
        assert!(readme.contains(&name), "README.md does not name {name}");
    }
}

/// The labels come from `BlockKind::ALL`; counting every kind once also proves that
/// `Metrics::task_done` has a slot for each.
#[test]
fn every_kind_and_pool_is_a_metric_label() {
    let metrics = Metrics::new();
    for kind in BlockKind::ALL {
        metrics.task_done(kind, Status::Success, 1);
    }
    let text = metrics.render();
    for kind in BlockKind::ALL {
        let series = format!(
            "worker_tasks_total{{status=\"success\",type=\"{}\"}} 1",
            kind.as_str()
        );
        assert!(text.contains(&series), "missing {series}");
        assert!(Pool::ALL.contains(&kind.pool()), "{kind:?}'s pool");
    }
    for pool in Pool::ALL {
        let series = format!("worker_pool_queue_depth{{pool=\"{}\"}}", pool.as_str());
        assert!(text.contains(&series), "missing {series}");
    }
}
