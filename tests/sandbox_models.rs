//! `ai.inference` model files are opened inside the tenant's sandbox, like `fs.get`
//! (issue 13, item 1): hard links, symlinks (also swapped in while jobs run), `..`,
//! absolute paths and another tenant's files are refused with `fs.get`'s codes and nothing
//! is read; the host cache is keyed on the opened file, not on a path. Real files under a
//! temporary FS root, the scheduler's CPU fallback.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_gpu::{Activation, Layer, Model, Scheduler, SchedulerConfig};
use beamline_testkit::blocks::{self, Executor};
use beamline_worker::blocks::inference::InferenceBlock;
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::{ErrorCode, TaskError};
use clap::Parser;
use serde_json::{json, Value};

const TENANT: &str = "tenant-a";
const OTHER: &str = "tenant-b";

/// One layer 2 → 1, no activation: y = a·x0 + b·x1. Same file size for every (a, b).
fn linear(a: f32, b: f32) -> Model {
    Model::new(vec![Layer::new(
        2,
        1,
        vec![a, b],
        vec![0.0],
        Activation::None,
    )
    .expect("layer")])
    .expect("model")
}

/// What `linear(a, b)` answers for the input row [1, 10].
fn answer(a: f32, b: f32) -> Value {
    json!([[a + 10.0 * b]])
}

struct Fixture {
    _dir: tempfile::TempDir,
    fs: PathBuf,
    gpu: Arc<Scheduler>,
    block: InferenceBlock,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = dir.path().join("fs");
        std::fs::create_dir_all(fs.join(TENANT).join("models")).expect("mkdir");
        std::fs::create_dir_all(fs.join(OTHER).join("models")).expect("mkdir");
        let config = Config::resolve(Cli::try_parse_from(["beamline_worker"]).expect("flags"))
            .expect("config");
        let gpu = Arc::new(
            Scheduler::start(SchedulerConfig {
                cpu_threads: 1,
                ..SchedulerConfig::default()
            })
            .expect("scheduler"),
        );
        let block = InferenceBlock::new(&config, gpu.clone(), fs.clone()).expect("block");
        Fixture {
            _dir: dir,
            fs,
            gpu,
            block,
        }
    }

    fn mine(&self) -> PathBuf {
        self.fs.join(TENANT)
    }

    fn other(&self) -> PathBuf {
        self.fs.join(OTHER)
    }

    fn run(&self, model: &str) -> Result<Value, TaskError> {
        let job = json!({"type": "ai.inference", "model": model, "inputs": [[1, 10]]});
        blocks::run(
            &self.block,
            TENANT,
            &job,
            Duration::from_secs(10),
            Executor::Tokio,
        )
        .map(|o| o.result.to_value()["outputs"].clone())
    }

    /// Refused with `code`, and no model was parsed or cached.
    #[track_caller]
    fn refused(&self, model: &str, code: ErrorCode) -> TaskError {
        let loads = self.gpu.stats().model_loads;
        match self.run(model) {
            Ok(v) => panic!("{model}: expected {code:?}, got outputs {v}"),
            Err(e) => {
                assert_eq!(e.code, code, "{model}: {e}");
                assert!(!e.retryable, "{model}: {e}");
                assert_eq!(
                    self.gpu.stats().model_loads,
                    loads,
                    "{model}: a model was read"
                );
                e
            }
        }
    }
}

/// renameat2(RENAME_EXCHANGE): swaps two names atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two live NUL-terminated paths; integer flags.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn write(path: &Path, m: &Model) {
    std::fs::write(path, m.to_safetensors()).expect("write model");
}

#[test]
fn a_hard_link_to_another_tenants_model_is_refused_and_not_read() {
    let f = Fixture::new();
    let theirs = f.other().join("models/secret.safetensors");
    write(&theirs, &linear(7.0, 7.0));
    std::fs::hard_link(&theirs, f.mine().join("models/hl.safetensors")).expect("hard link");
    let e = f.refused("models/hl.safetensors", ErrorCode::PermissionDenied);
    assert!(e.message.contains("leaves the tenant root"), "{e}");
    assert!(
        !e.message.contains(f.fs.to_str().expect("utf8")),
        "host path leaked: {e}"
    );
    // A hard link between two of the tenant's own names is refused too (as by fs.get):
    // the kernel cannot tell where a file's other names are.
    write(&f.mine().join("models/own.safetensors"), &linear(1.0, 1.0));
    std::fs::hard_link(
        f.mine().join("models/own.safetensors"),
        f.mine().join("models/own2.safetensors"),
    )
    .expect("hard link");
    f.refused("models/own.safetensors", ErrorCode::PermissionDenied);
    assert_eq!(f.gpu.stats().model_loads, 0);
}

#[test]
fn dot_dot_absolute_paths_and_other_tenants_paths_are_refused() {
    let f = Fixture::new();
    let theirs = f.other().join("models/secret.safetensors");
    write(&theirs, &linear(7.0, 7.0));
    // `..` above the tenant root: 2003, as fs.get.
    for p in [
        "../tenant-b/models/secret.safetensors",
        "models/../../tenant-b/models/secret.safetensors",
        "/../tenant-b/models/secret.safetensors",
    ] {
        let e = f.refused(p, ErrorCode::PermissionDenied);
        assert!(e.message.contains("leaves the tenant root"), "{p}: {e}");
    }
    // An absolute path is tenant-relative (`<fs-root>/tenant-a/<abs>`), as for fs.get:
    // another tenant's file by its host path is simply not there.
    let abs = theirs.to_str().expect("utf8").to_owned();
    f.refused(&abs, ErrorCode::ResourceUnavailable);
    // Symlinks out of the root, relative and absolute, to a file or a directory.
    std::os::unix::fs::symlink(&theirs, f.mine().join("models/abs.safetensors")).expect("ln");
    std::os::unix::fs::symlink(
        "../../tenant-b/models/secret.safetensors",
        f.mine().join("models/rel.safetensors"),
    )
    .expect("ln");
    std::os::unix::fs::symlink(f.other().join("models"), f.mine().join("theirs")).expect("ln");
    for p in [
        "models/abs.safetensors",
        "models/rel.safetensors",
        "theirs/secret.safetensors",
    ] {
        f.refused(p, ErrorCode::PermissionDenied);
    }
    // A directory, a FIFO: not a model (1001), not read.
    f.refused("models", ErrorCode::InvalidInput);
    let fifo = f.mine().join("models/fifo.safetensors");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    f.refused("models/fifo.safetensors", ErrorCode::InvalidInput);
    // A symlink that stays inside the root is followed, as by fs.get.
    write(&f.mine().join("models/own.safetensors"), &linear(1.0, 2.0));
    std::os::unix::fs::symlink("own.safetensors", f.mine().join("models/alias.safetensors"))
        .expect("ln");
    assert_eq!(
        f.run("models/alias.safetensors").expect("runs"),
        answer(1.0, 2.0)
    );
}

/// A directory on the model's path is swapped for a symlink to another tenant's
/// directory, back and forth, while jobs load the model: no job may ever get the other
/// tenant's model. (Before the sandboxed open, a job could pass the path check on the
/// real directory and then read through the symlink.)
#[test]
fn a_symlink_swapped_in_while_models_load_never_reaches_another_tenant() {
    let f = Fixture::new();
    let mine = f.mine();
    std::fs::create_dir(mine.join("m")).expect("mkdir");
    write(&mine.join("m/x.safetensors"), &linear(1.0, 2.0));
    std::fs::create_dir(f.other().join("m")).expect("mkdir");
    // Another size than ours: a cache keyed by (path, mtime, size) cannot mask a leak
    // (file times are only as fine as the kernel's tick, so the mtimes may be equal).
    let theirs = Model::new(vec![Layer::new(
        2,
        2,
        vec![7.0; 4],
        vec![0.0; 2],
        Activation::None,
    )
    .expect("layer")])
    .expect("model");
    write(&f.other().join("m/x.safetensors"), &theirs);
    std::os::unix::fs::symlink(f.other().join("m"), mine.join("m.link")).expect("ln");
    assert_eq!(f.run("m/x.safetensors").expect("runs"), answer(1.0, 2.0));

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, mine) = (stop.clone(), mine.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // `m` is the directory, then the symlink, then the directory… (atomic
                // exchanges: the name never goes missing).
                exchange(&mine.join("m"), &mine.join("m.link")).expect("exchange");
                flips += 1;
            }
            flips
        })
    };
    let (mut own, mut refused, mut missing) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    let mut leak = None;
    while started.elapsed() < Duration::from_secs(4) {
        match f.run("m/x.safetensors") {
            Ok(v) if v == answer(1.0, 2.0) => own += 1,
            Ok(v) => {
                leak = Some(v);
                break;
            }
            Err(e) if e.code == ErrorCode::PermissionDenied => refused += 1,
            Err(e) if e.code == ErrorCode::ResourceUnavailable => missing += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().expect("flipper");
    eprintln!("own {own}, refused {refused}, missing {missing}, flips {flips}");
    assert_eq!(leak, None, "another tenant's model was read");
    // The swap really raced with the loads: some saw the symlink, some the directory.
    assert!(
        refused > 0 && own > 1,
        "own {own}, refused {refused}, missing {missing}"
    );
}

#[test]
fn the_cache_is_keyed_on_the_opened_file_not_on_its_path() {
    let f = Fixture::new();
    let p = f.mine().join("models/x.safetensors");
    write(&p, &linear(1.0, 2.0));
    assert_eq!(
        f.run("models/x.safetensors").expect("runs"),
        answer(1.0, 2.0)
    );
    assert_eq!(f.gpu.stats().model_loads, 1);
    // Another file at the same path with the same size and the same mtime (restored):
    // a path-keyed cache would serve the old model. This one reads the new file.
    let mtime = std::fs::metadata(&p)
        .expect("stat")
        .modified()
        .expect("mtime");
    let tmp = f.mine().join("models/.x.new");
    write(&tmp, &linear(3.0, 4.0));
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .expect("open")
        .set_modified(mtime)
        .expect("set mtime");
    std::fs::rename(&tmp, &p).expect("replace");
    assert_eq!(
        std::fs::metadata(&p).expect("stat").len(),
        linear(1.0, 2.0).to_safetensors().len() as u64
    );
    assert_eq!(
        f.run("models/x.safetensors").expect("runs"),
        answer(3.0, 4.0)
    );
    assert_eq!(f.gpu.stats().model_loads, 2);
    // The same file under a new name is the same cache entry.
    std::fs::rename(&p, f.mine().join("models/y.safetensors")).expect("rename");
    assert_eq!(
        f.run("models/y.safetensors").expect("runs"),
        answer(3.0, 4.0)
    );
    let st = f.gpu.stats();
    assert_eq!(st.model_loads, 2, "{st:?}");
}
