//! A `nats-server -js` of the caller's own on a free port of 127.0.0.1, killed when dropped
//! (the shape of nats.rs's `nats-server` test helper). Tests use [`NatsServer::start`] and
//! [`NatsServer::start_with`], which panic; the bench uses [`NatsServer::builder`], which
//! reports errors and can log to a file.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{is_listening, is_listening_anyone, try_free_port};

/// Where nats-server usually is when it is not on `PATH` (the Debian package: /usr/sbin).
const FALLBACKS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// The nats-server executable: `NATS_SERVER_BIN` when set, else the first of /usr/sbin,
/// /usr/bin, /usr/local/bin that has one, else `nats-server` (looked up on `PATH`).
pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
        FALLBACKS
            .iter()
            .find(|p| Path::new(p).exists())
            .map_or_else(|| "nats-server".to_owned(), |p| (*p).to_owned())
    })
}

/// Finds an executable: the path itself if it has a slash, else `$PATH`, else `fallbacks`.
pub fn find_executable(name: &Path, fallbacks: &[&str]) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    fallbacks.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The JetStream store: a temp dir of the server's own (removed on drop), or the caller's.
#[derive(Debug)]
enum Store {
    Own(tempfile::TempDir),
    Given(PathBuf),
}

/// A running `nats-server -js` (see the module doc). `Nats` is its short name in tests.
#[derive(Debug)]
pub struct NatsServer {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    store: Store,
    exe: PathBuf,
    extra: Vec<String>,
    log: Option<PathBuf>,
    die_with_parent: bool,
    ready_timeout: Duration,
    child: Option<Child>,
}

/// The short name the tests use.
pub type Nats = NatsServer;

/// Options of a server started with [`NatsServer::builder`].
#[derive(Debug, Default)]
pub struct NatsServerBuilder {
    exe: Option<PathBuf>,
    extra: Vec<String>,
    store: Option<PathBuf>,
    log: Option<PathBuf>,
    die_with_parent: bool,
    ready_timeout: Option<Duration>,
}

impl NatsServerBuilder {
    /// The executable (a path, or a name looked up on `PATH`, then /usr/sbin and /usr/bin);
    /// default [`nats_server_bin`].
    pub fn exe(mut self, exe: &Path) -> Self {
        self.exe = Some(exe.to_path_buf());
        self
    }

    /// Extra server arguments (auth, TLS, a config file).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// The JetStream store directory (default: a temp dir removed with the server).
    pub fn store_dir(mut self, dir: &Path) -> Self {
        self.store = Some(dir.to_path_buf());
        self
    }

    /// Appends the server's stdout and stderr to this file (default: discarded).
    pub fn log(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    /// The server gets SIGKILL when the thread that started it ends (`PR_SET_PDEATHSIG`),
    /// so it dies even when its owner is SIGKILLed (the bench, run from its main thread).
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// How long to wait for the client port (default 10 s).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = Some(t);
        self
    }

    /// Starts it and waits until its client port listens.
    pub fn start(self) -> std::io::Result<NatsServer> {
        let exe = match self.exe {
            Some(e) => find_executable(&e, &FALLBACKS).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("nats-server not found ({})", e.display()),
                )
            })?,
            None => PathBuf::from(nats_server_bin()),
        };
        let store = match self.store {
            Some(dir) => Store::Given(dir),
            None => Store::Own(tempfile::tempdir()?),
        };
        let mut n = NatsServer {
            port: try_free_port()?,
            store,
            exe,
            extra: self.extra,
            log: self.log,
            die_with_parent: self.die_with_parent,
            ready_timeout: self.ready_timeout.unwrap_or(Duration::from_secs(10)),
            child: None,
        };
        // The port was free when it was picked; another process may have bound it since
        // (`ports::is_listening`): then the server cannot listen, and starts again on
        // another port, up to a few times.
        for _ in 0..4 {
            match n.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => n.port = try_free_port()?,
                other => return other.map(|()| n),
            }
        }
        n.spawn().map(|()| n)
    }
}

impl NatsServer {
    /// A server with default options; panics when it cannot start.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// A server with extra arguments (auth, TLS, config file); panics when it cannot start.
    pub fn start_with(extra: &[&str]) -> NatsServer {
        NatsServer::builder()
            .args(extra)
            .start()
            .expect("nats-server runs (install the Debian package nats-server)")
    }

    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store_path())
        .args(&self.extra)
        .stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        if self.die_with_parent {
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("spawn {}: {e}", self.exe.display()))
        })?;
        let end = Instant::now() + self.ready_timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                // Someone else listens on the port it was given.
                let kind = if is_listening_anyone(self.port) {
                    std::io::ErrorKind::AddrInUse
                } else {
                    std::io::ErrorKind::Other
                };
                return Err(std::io::Error::new(
                    kind,
                    format!("nats-server exited ({st}): {}", self.log_tail(2000)),
                ));
            }
            if is_listening(child.id(), self.port) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "nats-server did not start: no listener on {} within {:?}",
                        self.port, self.ready_timeout
                    ),
                ));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store_path(&self) -> &Path {
        match &self.store {
            Store::Own(t) => t.path(),
            Store::Given(p) => p,
        }
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What `nats-server --version` prints (empty when it prints nothing).
    pub fn version(&self) -> String {
        Command::new(&self.exe)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The last `n` bytes of its log file (empty without one).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(bytes) = self.log.as_ref().and_then(|p| std::fs::read(p).ok()) else {
            return String::new();
        };
        let from = bytes.len().saturating_sub(n);
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Kills the server (SIGKILL); the store stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store; panics when it cannot.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("nats-server restarts");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
