//! Configuration in two stages: [`Cli`] (flags with environment fallback, as the guide
//! names them) and an optional TOML profile from `tuning/` are read, then resolved once
//! into one validated [`Config`]. Precedence: flag > environment > profile > default.
//!
//! Every option is declared once, with its help and default, in the table of
//! `options.rs`; it generates the flags, the profile's `[worker]` keys and the picking.
//! The third stage, the objects that do the work, is `app`.

mod options;
mod profile;
mod url;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::host::{HostClass, Topology};
pub use options::Cli;
use options::{Defaults, Options};
pub use profile::{Placement, Profile};
use url::{split_url_credentials, UrlAuth};

/// How the worker takes assignments from NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// One durable pull consumer shared by every instance (at-least-once, acked after the
    /// result is stored).
    Jetstream,
    /// A core NATS queue group (at-most-once; no broker-side redelivery).
    Core,
}

/// File backend for `fs.*` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsBackend {
    /// io_uring when the kernel allows it, else threads.
    Auto,
    #[value(name = "io_uring")]
    IoUring,
    Threads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// NATS credentials, resolved; secrets never appear in Debug output.
#[derive(Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub nkey_seed: Option<String>,
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: bool| if o { "[REDACTED]" } else { "-" };
        f.debug_struct("NatsAuth")
            .field("user", &self.user)
            .field("password", &set(self.password.is_some()))
            .field("token", &set(self.token.is_some()))
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &set(self.nkey_seed.is_some()))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// NATS subjects, derived once from the prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    pub assign: String,
    pub ack: String,
    pub result: String,
    pub dlq: String,
    pub cancel: String,
    pub approval_request: String,
    pub approval_decision: String,
    pub heartbeat: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        let s = |suffix: &str| format!("{prefix}.{suffix}");
        Subjects {
            assign: s("exec.assign.v1"),
            ack: s("exec.assign.v1.ack"),
            result: s("exec.result.v1"),
            dlq: s("exec.dlq.v1"),
            cancel: s("exec.cancel.v1"),
            approval_request: s("human.approval.request.v1"),
            approval_decision: s("human.approval.decision.v1"),
            heartbeat: s("worker.heartbeat.v1"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JetStreamNames {
    pub stream: String,
    pub durable: String,
    pub output_stream: String,
    pub results_bucket: String,
    pub approval_stream: String,
    pub create: bool,
    pub replicas: usize,
    pub ack_wait: Duration,
}

/// The one resolved configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: String,
    pub nats_url: String,
    pub nats_auth: NatsAuth,
    pub consumer: ConsumerMode,
    pub subjects: Subjects,
    pub queue_group: String,
    pub js: JetStreamNames,
    pub cpu_pool_size: usize,
    pub io_pool_size: usize,
    pub gpu_pool_size: usize,
    pub cpu_cores: Vec<usize>,
    pub io_cores: Vec<usize>,
    pub queue_capacity: usize,
    pub max_in_flight: usize,
    /// Core mode: lanes always in the queue group (`transport::LaneScale`).
    pub min_lanes: usize,
    pub max_memory_mb: u64,
    pub max_job_time: Duration,
    pub default_timeout: Duration,
    pub dedupe_ttl: Duration,
    pub prometheus_endpoint: SocketAddr,
    pub health_endpoint: Option<SocketAddr>,
    pub otlp_endpoint: Option<String>,
    pub sandbox: bool,
    pub fs_root: PathBuf,
    pub sql_root: PathBuf,
    pub fs_backend: FsBackend,
    pub fs_max_bytes: u64,
    pub http_ca_file: Option<PathBuf>,
    pub http_max_response_bytes: usize,
    pub http_deny_cidrs: Vec<ipnet::IpNet>,
    pub http_allow_hosts: Vec<String>,
    pub sql_max_rows: usize,
    pub sql_time_limit: Duration,
    pub heartbeat_interval: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub profile_name: Option<String>,
    pub tenant_max_in_flight: usize,
    /// Assignments per second per tenant (0: no rate quota).
    pub tenant_rate_limit: u32,
    /// Burst of the rate quota (0: `tenant_rate_limit`).
    pub tenant_rate_burst: u32,
    pub gpu_max_batch_size: usize,
    pub gpu_max_queue_delay: Duration,
    pub gpu_memory_budget_mb: u64,
    /// `--models-dir`: where `ai.embed` finds its models by name.
    pub models_dir: PathBuf,
    /// Where the topology was read (`--sysfs-root`, default `/sys`).
    pub sysfs_root: PathBuf,
    /// Cores placement may use (online, and allowed to this process on the live host).
    pub allowed_cores: Vec<usize>,
    /// GPU slot thread i runs on `gpu_cores[i % len]` (empty: unpinned).
    pub gpu_cores: Vec<usize>,
    pub profile_path: Option<PathBuf>,
    pub profile_hardware: Option<String>,
    pub profile_host: Option<HostClass>,
}

/// A start-up configuration error; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(flag: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid --{flag}: {why}"))
}

/// Link-local (incl. cloud metadata 169.254.169.254) and the IPv6 equivalents.
pub const DEFAULT_DENY_CIDRS: &str =
    "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32";

fn online_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn positive(flag: &str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        Err(bad(flag, "must be at least 1"))
    } else {
        Ok(v)
    }
}

fn positive_u64(flag: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(bad(flag, "must be at least 1"))
    } else {
        Ok(v)
    }
}

fn addr(flag: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    let v = v.trim_start_matches("http://");
    v.parse()
        .map_err(|e| bad(flag, format!("{v:?} is not HOST:PORT ({e})")))
}

fn js_name(flag: &str, v: String) -> Result<String, ConfigError> {
    if v.is_empty()
        || v.bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'.' | b'*' | b'>'))
    {
        return Err(bad(flag, format!("{v:?} is not a valid JetStream name")));
    }
    Ok(v)
}

/// The cores placement may use, read from the topology `--sysfs-root` names.
struct Usable {
    sysfs_root: PathBuf,
    topo: Option<Topology>,
    allowed: Vec<usize>,
}

impl Usable {
    /// The live host (`/sys`, where an unreadable tree means "all online cores") or the
    /// captured tree `--sysfs-root` names (where it is an error).
    fn read(cli: &Cli) -> Result<Usable, ConfigError> {
        let live = cli.sysfs_root.is_none();
        let sysfs_root = cli
            .sysfs_root
            .clone()
            .unwrap_or_else(|| crate::host::live_root().to_path_buf());
        let topo = match Topology::read(&sysfs_root) {
            Ok(t) => Some(t),
            Err(e) if !live => return Err(bad("sysfs-root", e)),
            Err(_) => None,
        };
        let allowed = match &topo {
            Some(t) => crate::host::allowed_cores(t, live),
            None => (0..online_cores()).collect(),
        };
        Ok(Usable {
            sysfs_root,
            topo,
            allowed,
        })
    }
}

/// Pool sizes and the cores each pool's threads are pinned to.
struct Pools {
    cpu: usize,
    io: usize,
    gpu: usize,
    cpu_cores: Vec<usize>,
    io_cores: Vec<usize>,
    gpu_cores: Vec<usize>,
}

impl Pools {
    /// The sizes from the options, the cores from the profile's `[pools]` (auto by default).
    fn place(cli: &Cli, p: &Profile, o: &Options, host: &Usable) -> Result<Pools, ConfigError> {
        let cpu = positive("cpu-pool-size", o.cpu_pool_size)?;
        let io = positive("io-pool-size", o.io_pool_size)?;
        let gpu = o.gpu_pool_size;
        let allowed = &host.allowed;
        let profile_err = |pool: &str, e: String| {
            let path = cli.profile.as_ref().map(|p| p.display().to_string());
            bad(
                "profile",
                format!("{} pools.{pool} {e}", path.unwrap_or_default()),
            )
        };
        let cpu_cores = p
            .pools
            .cpu_cores
            .resolve(cpu, 0, allowed)
            .map_err(|e| profile_err("cpu_cores", e))?;
        let io_cores = p
            .pools
            .io_cores
            .resolve(io, cpu, allowed)
            .map_err(|e| profile_err("io_cores", e))?;
        let gpu_cores = match (&p.pools.gpu_cores, &host.topo) {
            (Placement::Auto, Some(t)) => crate::host::auto_gpu_cores(t, allowed, gpu),
            (Placement::Named(n), Some(t)) if n == "auto" => {
                crate::host::auto_gpu_cores(t, allowed, gpu)
            }
            (Placement::Auto, None) => Vec::new(),
            (other, _) => other
                .resolve(gpu, 0, allowed)
                .map_err(|e| profile_err("gpu_cores", e))?,
        };
        Ok(Pools {
            cpu,
            io,
            gpu,
            cpu_cores,
            io_cores,
            gpu_cores,
        })
    }
}

fn subject_prefix(prefix: &str) -> Result<Subjects, ConfigError> {
    if prefix.is_empty() || prefix.contains(['*', '>', ' ']) || prefix.ends_with('.') {
        return Err(bad(
            "subject-prefix",
            format!("{prefix:?} is not a subject prefix"),
        ));
    }
    Ok(Subjects::new(prefix))
}

/// The server URLs without credentials (checked by the rule the client applies: a URL,
/// `nats://` assumed without a scheme, of scheme nats, tls, ws or wss), and the
/// credentials they held.
fn nats_urls(list: &str) -> Result<(String, UrlAuth), ConfigError> {
    let (urls, auth) = split_url_credentials(list).map_err(|e| bad("nats-url", e))?;
    for server in urls.split(',').map(str::trim) {
        if !is_server_url(server) {
            return Err(bad(
                "nats-url",
                format!("{server:?} is not a NATS server URL"),
            ));
        }
    }
    Ok((urls, auth))
}

/// Whether `server` is one server URL (`nats://h:4222`, `tls://h`, `h:4222`), as the
/// NATS client's own parser judges it; checked here so that config needs no transport.
fn is_server_url(server: &str) -> bool {
    let parsed = if server.contains("://") {
        ::url::Url::parse(server)
    } else {
        ::url::Url::parse(&format!("nats://{server}"))
    };
    parsed.is_ok_and(|u| matches!(u.scheme(), "nats" | "tls" | "ws" | "wss"))
}

/// Flags and variables first, then what the URL held.
fn nats_auth(cli: &Cli, url_auth: UrlAuth) -> Result<NatsAuth, ConfigError> {
    let nkey_seed = match &cli.nats_nkey_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| bad("nats-nkey-file", format!("{}: {e}", f.display())))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(NatsAuth {
        user: cli.nats_user.clone().or(url_auth.user),
        password: cli.nats_password.clone().or(url_auth.password),
        token: cli.nats_token.clone().or(url_auth.token),
        creds_file: cli.nats_creds.clone(),
        nkey_seed,
        tls_ca: cli.nats_tls_ca.clone(),
    })
}

/// `--js-ack-wait-ms` and `--js-replicas`, checked.
fn jetstream_limits(o: &Options) -> Result<(Duration, usize), ConfigError> {
    if o.js_ack_wait_ms < 1000 {
        return Err(bad("js-ack-wait-ms", "must be at least 1000"));
    }
    if !(1..=5).contains(&o.js_replicas) {
        return Err(bad("js-replicas", "must be between 1 and 5"));
    }
    Ok((Duration::from_millis(o.js_ack_wait_ms), o.js_replicas))
}

fn jetstream(
    o: &Options,
    ack_wait: Duration,
    replicas: usize,
) -> Result<JetStreamNames, ConfigError> {
    Ok(JetStreamNames {
        stream: js_name("js-stream", o.js_stream.clone())?,
        durable: js_name("js-durable", o.js_durable.clone())?,
        output_stream: js_name("js-output-stream", o.js_output_stream.clone())?,
        results_bucket: js_name("js-results-bucket", o.js_results_bucket.clone())?,
        approval_stream: js_name("js-approval-stream", o.js_approval_stream.clone())?,
        create: o.js_create,
        replicas,
        ack_wait,
    })
}

fn deny_cidrs(list: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| bad("http-deny-cidrs", format!("{c:?} is not a CIDR")))
        })
        .collect()
}

fn allow_hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

fn millis(flag: &str, v: u64) -> Result<Duration, ConfigError> {
    positive_u64(flag, v).map(Duration::from_millis)
}

/// What is checked before the limits: placement, NATS, endpoints, deadlines (in this
/// order, which is the order their errors are reported in).
struct Checked {
    host: Usable,
    pools: Pools,
    subjects: Subjects,
    nats_url: String,
    nats_auth: NatsAuth,
    prometheus_endpoint: SocketAddr,
    health_endpoint: Option<SocketAddr>,
    max_job_time: Duration,
    default_timeout: Duration,
    js: JetStreamNames,
}

impl Checked {
    fn check(cli: &Cli, p: &Profile, o: &Options, host: Usable) -> Result<Checked, ConfigError> {
        let pools = Pools::place(cli, p, o, &host)?;
        let subjects = subject_prefix(&o.subject_prefix)?;
        let (nats_url, url_auth) = nats_urls(&o.nats_url)?;
        let prometheus_endpoint = addr("prometheus-endpoint", &o.prometheus_endpoint)?;
        let health_endpoint = match o.health_endpoint.as_str() {
            "off" | "" => None,
            h => Some(addr("health-endpoint", h)?),
        };
        if o.worker_id.is_empty() {
            return Err(bad("worker-id", "must not be empty"));
        }
        let max_job_time = millis("max-cpu-time-ms", o.max_cpu_time_ms)?;
        let default_timeout = millis("default-timeout-ms", o.default_timeout_ms)?;
        let (ack_wait, replicas) = jetstream_limits(o)?;
        let nats_auth = nats_auth(cli, url_auth)?;
        let js = jetstream(o, ack_wait, replicas)?;
        Ok(Checked {
            host,
            pools,
            subjects,
            nats_url,
            nats_auth,
            prometheus_endpoint,
            health_endpoint,
            max_job_time,
            default_timeout,
            js,
        })
    }
}

impl Config {
    /// Parses the process arguments and environment and resolves them.
    pub fn from_env() -> Result<Config, ConfigError> {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            // `--help` and `--version` are answers, not errors: clap prints them on stdout
            // and exits 0.
            Err(e)
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
            {
                e.exit()
            }
            Err(e) => return Err(ConfigError(e.to_string())),
        };
        Config::resolve(cli)
    }

    /// Resolves flags/env (already merged by clap) over the profile over defaults
    /// (`Options`), then checks each value; an error names the flag.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let p = match &cli.profile {
            Some(path) => Profile::load(path).map_err(|e| bad("profile", e))?,
            None => Profile::default(),
        };
        // Placement is resolved against the topology the plan shows (crate::host).
        let host = Usable::read(&cli)?;
        let o = Options::pick(&cli, &p.worker, &Defaults::new(host.allowed.len()));
        let checked = Checked::check(&cli, &p, &o, host)?;
        Config::assemble(o, p, cli.profile, checked)
    }

    /// The limits checked last, and everything in its place.
    fn assemble(
        o: Options,
        p: Profile,
        profile_path: Option<PathBuf>,
        c: Checked,
    ) -> Result<Config, ConfigError> {
        Ok(Config {
            worker_id: o.worker_id,
            nats_url: c.nats_url,
            nats_auth: c.nats_auth,
            consumer: o.consumer,
            subjects: c.subjects,
            queue_group: o.queue_group,
            js: c.js,
            cpu_pool_size: c.pools.cpu,
            io_pool_size: c.pools.io,
            gpu_pool_size: c.pools.gpu,
            cpu_cores: c.pools.cpu_cores,
            io_cores: c.pools.io_cores,
            queue_capacity: positive("queue-capacity", o.queue_capacity)?,
            max_in_flight: positive("max-in-flight", o.max_in_flight)?,
            min_lanes: positive("min-lanes", o.min_lanes)?,
            max_memory_mb: positive_u64("max-memory-mb", o.max_memory_mb)?,
            max_job_time: c.max_job_time,
            default_timeout: c.default_timeout,
            dedupe_ttl: Duration::from_secs(positive_u64("dedupe-ttl-s", o.dedupe_ttl_s)?),
            prometheus_endpoint: c.prometheus_endpoint,
            health_endpoint: c.health_endpoint,
            otlp_endpoint: (!o.otlp_endpoint.is_empty()).then_some(o.otlp_endpoint),
            sandbox: o.sandbox_mode,
            fs_root: o.fs_root,
            sql_root: o.sql_root,
            fs_backend: o.fs_backend,
            fs_max_bytes: positive_u64("fs-max-bytes", o.fs_max_bytes)?,
            http_ca_file: o
                .http_ca_file
                .to_str()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            http_max_response_bytes: positive(
                "http-max-response-bytes",
                o.http_max_response_bytes,
            )?,
            http_deny_cidrs: deny_cidrs(&o.http_deny_cidrs)?,
            http_allow_hosts: allow_hosts(&o.http_allow_hosts),
            sql_max_rows: positive("sql-max-rows", o.sql_max_rows)?,
            sql_time_limit: millis("sql-time-limit-ms", o.sql_time_limit_ms)?,
            heartbeat_interval: millis("heartbeat-interval-ms", o.heartbeat_interval_ms)?,
            shutdown_grace: Duration::from_millis(o.shutdown_grace_ms),
            log_format: o.log_format,
            profile_name: p.name,
            tenant_max_in_flight: o.tenant_max_in_flight,
            tenant_rate_limit: o.tenant_rate_limit,
            tenant_rate_burst: o.tenant_rate_burst,
            gpu_max_batch_size: positive("gpu-max-batch-size", o.gpu_max_batch_size)?,
            gpu_max_queue_delay: Duration::from_micros(o.gpu_max_queue_delay_us),
            gpu_memory_budget_mb: positive_u64("gpu-memory-budget-mb", o.gpu_memory_budget_mb)?,
            models_dir: o.models_dir,
            sysfs_root: c.host.sysfs_root,
            allowed_cores: c.host.allowed,
            gpu_cores: c.pools.gpu_cores,
            profile_path,
            profile_hardware: p.hardware,
            profile_host: p.host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["beamline_worker"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses")
    }

    #[test]
    fn flag_beats_profile_beats_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "name = \"t\"\n[worker]\ncpu_pool_size = 3\nio_pool_size = 2\ndefault_timeout_ms = 1234\n",
        )
        .expect("write");
        let c = Config::resolve(cli(&[
            "--profile",
            path.to_str().expect("utf8"),
            "--cpu-pool-size",
            "5",
        ]))
        .expect("resolves");
        assert_eq!(c.cpu_pool_size, 5);
        assert_eq!(c.io_pool_size, 2);
        assert_eq!(c.default_timeout, Duration::from_millis(1234));
        assert_eq!(c.subjects.assign, "caf.exec.assign.v1");
        assert_eq!(c.subjects.ack, "caf.exec.assign.v1.ack");
        assert_eq!(c.consumer, ConsumerMode::Jetstream);
    }

    #[test]
    fn tenant_rate_quota_comes_from_flag_env_or_profile() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[worker]\ntenant_rate_limit = 7\ntenant_rate_burst = 9\n",
        )
        .expect("write");
        let profile = path.to_str().expect("utf8");
        let c = Config::resolve(cli(&["--profile", profile])).expect("resolves");
        assert_eq!((c.tenant_rate_limit, c.tenant_rate_burst), (7, 9));
        let c = Config::resolve(cli(&["--profile", profile, "--tenant-rate-limit=3"]))
            .expect("resolves");
        assert_eq!((c.tenant_rate_limit, c.tenant_rate_burst), (3, 9));
        let c = Config::resolve(cli(&[])).expect("resolves");
        assert_eq!(
            (c.tenant_rate_limit, c.tenant_rate_burst),
            (0, 0),
            "off by default"
        );
        let env_of = |id: &str| {
            Cli::command()
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env_of("tenant_rate_limit").as_deref(),
            Some("WORKER_TENANT_RATE_LIMIT")
        );
        assert_eq!(
            env_of("tenant_rate_burst").as_deref(),
            Some("WORKER_TENANT_RATE_BURST")
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Config::resolve(cli(&["--cpu-pool-size", "0"])).expect_err("rejected");
        assert!(err.to_string().contains("--cpu-pool-size"), "{err}");
        let err = Config::resolve(cli(&["--prometheus-endpoint", "nope"])).expect_err("rejected");
        assert!(err.to_string().contains("--prometheus-endpoint"), "{err}");
        let err =
            Config::resolve(cli(&["--http-deny-cidrs", "10.0.0.0/33"])).expect_err("rejected");
        assert!(err.to_string().contains("--http-deny-cidrs"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[worker]\nno_such_key = 1\n").expect("write");
        let err = Config::resolve(cli(&["--profile", path.to_str().expect("utf8")]))
            .expect_err("rejected");
        assert!(err.to_string().contains("--profile"), "{err}");
    }

    #[test]
    fn credentials_are_taken_out_of_nats_urls() {
        let (urls, auth) =
            split_url_credentials("nats://al%40ce:p%3Ass@h1:4222, nats://h2:4222").expect("parses");
        assert_eq!(urls, "nats://h1:4222,nats://h2:4222");
        assert_eq!(
            (auth.user.as_deref(), auth.password.as_deref()),
            (Some("al@ce"), Some("p:ss"))
        );
        let (urls, auth) = split_url_credentials("tls://s3cr3t@h:4443").expect("parses");
        assert_eq!(
            (urls.as_str(), auth.token.as_deref()),
            ("tls://h:4443", Some("s3cr3t"))
        );
        assert!(split_url_credentials(" , ").is_err());
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let c = Config::resolve(cli(&[
            "--nats-password",
            "hunter2",
            "--nats-token",
            "tok3n",
        ]))
        .expect("resolves");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("tok3n"), "{dbg}");
    }

    #[test]
    fn every_flag_in_help_says_what_it_does_and_its_default() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        let mut flags = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            flags += 1;
            let text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let (purpose, default) = text.split_once(" [default: ").unwrap_or((&text, ""));
            assert!(
                purpose.trim().len() > 3,
                "--{long} has no help line: {text:?}"
            );
            assert!(
                default.ends_with(']') && default.len() > 1,
                "--{long} does not show its default (or `none`): {text:?}"
            );
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} not in --help"
            );
            assert!(
                help.contains(purpose.trim()),
                "--{long}'s help line not in --help"
            );
        }
        assert!(flags >= 50, "only {flags} flags");
        assert_eq!(help.matches("[default: ").count(), flags, "{help}");
    }

    #[test]
    fn defaults_in_help_are_the_defaults_used() {
        for (name, value, shown) in Options::defaults_shown(&Defaults::new(4)) {
            let value = value.trim_matches('"').to_ascii_lowercase();
            // Host-dependent, or empty (shown as `none`/`empty`).
            if matches!(name, "cpu_pool_size" | "io_pool_size" | "worker_id") || value.is_empty() {
                continue;
            }
            assert!(
                shown.to_ascii_lowercase().starts_with(&value),
                "--{name}: the default is {value:?} but --help shows {shown:?}"
            );
        }
    }
}
