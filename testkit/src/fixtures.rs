//! Files the tests read: the repository's own (tests/fixtures/, ops/, tuning/), found from
//! this crate's place in the workspace, and the embedding model kept outside it.

use std::path::PathBuf;

use serde_json::Value;

/// The repository root (the workspace that holds this crate).
pub fn repo_root() -> PathBuf {
    let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    kit.parent().map_or(kit.clone(), PathBuf::from)
}

/// A path below the repository root, e.g. `repo_path("ops/systemd/worker.env")`.
pub fn repo_path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// `tests/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The text of `tests/fixtures/<name>`; panics when it cannot be read.
pub fn fixture_text(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/fixtures/<name>` parsed as JSON (the Router's golden assignment and results).
pub fn golden(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name)).expect("json")
}

/// The directory that holds the `ai.embed` models (`scripts/ensure-model.sh` fills it):
/// `BEAMLINE_MODELS_DIR` when set and not empty, else `~/.cache/beamline/models`. Panics,
/// naming the script, when it has no all-MiniLM-L6-v2.
pub fn models_dir() -> PathBuf {
    let base = std::env::var_os("BEAMLINE_MODELS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/beamline/models")
        });
    assert!(
        base.join("all-MiniLM-L6-v2/model.safetensors").is_file(),
        "{} has no all-MiniLM-L6-v2: run scripts/ensure-model.sh first",
        base.display()
    );
    base
}
