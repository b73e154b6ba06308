//! The worker binary as a child process of a test: its own fs and sql roots (temp dirs),
//! free metrics and health ports, its log in a file; SIGKILLed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ports::{free_port, is_listening};

/// The worker binary under test: `BEAMLINE_WORKER_BIN` when set (a binary kept aside, e.g.
/// one built before a fix, or when several checkouts share one target dir), else the one
/// cargo built for this test.
pub fn worker_bin() -> String {
    std::env::var("BEAMLINE_WORKER_BIN").unwrap_or_else(|_| built_worker_bin())
}

/// `<target>/<profile>/beamline_worker`: an integration test runs from
/// `<target>/<profile>/deps/`, and cargo builds the package's binaries before its tests
/// (what `CARGO_BIN_EXE_beamline_worker` names in the root crate's own tests).
fn built_worker_bin() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    profile_dir
        .join("beamline_worker")
        .to_string_lossy()
        .into_owned()
}

/// The worker binary, running against a test's NATS.
#[derive(Debug)]
pub struct Worker {
    child: Option<Child>,
    pub metrics_port: u16,
    pub health_port: u16,
    pub log: PathBuf,
    pub fs_root: PathBuf,
    pub sql_root: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _dir: Arc<tempfile::TempDir>,
}

/// A worker not started yet: its arguments, environment and roots.
#[derive(Debug)]
pub struct WorkerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: Arc<tempfile::TempDir>,
    fs_root: PathBuf,
    sql_root: PathBuf,
}

impl WorkerBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn fs_root(&self) -> &Path {
        &self.fs_root
    }
    pub fn sql_root(&self) -> &Path {
        &self.sql_root
    }
    pub fn start(self) -> Worker {
        let metrics_port = free_port();
        let health_port = free_port();
        let mut w = Worker {
            child: None,
            metrics_port,
            health_port,
            log: self.dir.path().join("worker.log"),
            fs_root: self.fs_root,
            sql_root: self.sql_root,
            args: self.args,
            envs: self.envs,
            _dir: self.dir,
        };
        w.spawn();
        w
    }
}

impl Worker {
    /// A worker with its own fs and sql roots; `nats` is its broker.
    pub fn builder(nats_url: &str) -> WorkerBuilder {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let fs_root = dir.path().join("fs");
        let sql_root = dir.path().join("sql");
        std::fs::create_dir_all(&fs_root).expect("fs root");
        std::fs::create_dir_all(&sql_root).expect("sql root");
        WorkerBuilder {
            args: vec![format!("--nats-url={nats_url}")],
            // Defaults a test can override with a flag (flag beats environment).
            envs: vec![
                ("WORKER_CPU_POOL_SIZE".into(), "2".into()),
                ("WORKER_IO_POOL_SIZE".into(), "1".into()),
            ],
            dir,
            fs_root,
            sql_root,
        }
    }

    /// Starts the worker and waits until it holds its metrics and health ports. They were
    /// free when they were picked, but another process (a broker or worker of a test
    /// running beside this one) may have bound one since: then this worker exits ("Address
    /// already in use") and is started again on fresh ports, up to a few times.
    fn spawn(&mut self) {
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            match self.spawn_once() {
                Started::Up => return,
                Started::PortTaken => {
                    self.metrics_port = free_port();
                    self.health_port = free_port();
                }
                Started::Failed(why) => panic!("{why}; log:\n{}", self.logs()),
            }
        }
        panic!(
            "worker found its ports taken {TRIES} times; log:\n{}",
            self.logs()
        );
    }

    fn spawn_once(&mut self) -> Started {
        // What this start writes begins here (a restart appends to the same file).
        let from = self.logs().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new(worker_bin())
            .args(&self.args)
            .arg(format!("--fs-root={}", self.fs_root.display()))
            .arg(format!("--sql-root={}", self.sql_root.display()))
            .arg(format!(
                "--prometheus-endpoint=127.0.0.1:{}",
                self.metrics_port
            ))
            .arg(format!("--health-endpoint=127.0.0.1:{}", self.health_port))
            .env_remove("NATS_URL")
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker binary runs");
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let written = self.logs().get(from..).unwrap_or_default().to_owned();
                return if written.contains("Address already in use") {
                    Started::PortTaken
                } else {
                    Started::Failed(format!("worker exited at start ({status})"))
                };
            }
            // Both: the metrics port is bound first, and the worker exits when the health
            // port then turns out to be taken.
            if is_listening(child.id(), self.metrics_port)
                && is_listening(child.id(), self.health_port)
            {
                self.child = Some(child);
                return Started::Up;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return Started::Failed("worker did not open its metrics and health ports".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn get(&self, path: &str, port: u16) -> (u16, String, String) {
        crate::http_client::http_get(port, path).await
    }

    pub async fn metrics(&self) -> String {
        crate::http_client::http_get(self.metrics_port, "/metrics")
            .await
            .2
    }
}

/// How one start of the worker went.
enum Started {
    Up,
    /// It exited because a port it was given had been taken in the meantime.
    PortTaken,
    Failed(String),
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `examples/<name>` of the root crate, built by cargo first (a no-op when `cargo test`
/// already built the examples, as `scripts/test.sh` does); panics when it cannot be built.
pub fn example_bin(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .current_dir(crate::fixtures::repo_root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    // A test runs from <target>/<profile>/deps/; examples sit in <target>/<profile>/examples/.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}
