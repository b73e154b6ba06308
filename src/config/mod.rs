//! Configuration in two stages: [`Cli`] (flags with environment fallback, as the guide
//! names them) and an optional TOML profile from `tuning/` are read, then resolved once
//! into one validated [`Config`]. Precedence: flag > environment > profile > default.

mod profile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use profile::{Placement, Profile};

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

/// Command line. Every option is optional here so that the profile can sit between the
/// environment and the default.
#[derive(Debug, Parser, Default)]
#[command(
    name = "beamline_worker",
    version,
    about = "CAF execution worker",
    after_help = "Subcommand: `beamline_worker plan [FLAGS] [--json]` prints the thread placement these flags give and exits."
)]
pub struct Cli {
    /// CPU pool threads (pinned); default: online cores.
    #[arg(long, env = "WORKER_CPU_POOL_SIZE")]
    pub cpu_pool_size: Option<usize>,
    /// GPU pool slots (0 disables the pool).
    #[arg(long, env = "WORKER_GPU_POOL_SIZE")]
    pub gpu_pool_size: Option<usize>,
    /// IO pool threads, one io_uring ring each; default: 1 per 2 online cores.
    #[arg(long, env = "WORKER_IO_POOL_SIZE")]
    pub io_pool_size: Option<usize>,
    /// Memory budget: admission stops taking work above it.
    #[arg(long, env = "WORKER_MAX_MEMORY_MB")]
    pub max_memory_mb: Option<u64>,
    /// Longest any one job may run (its deadline is clamped to this).
    #[arg(long, env = "WORKER_MAX_CPU_TIME_MS")]
    pub max_cpu_time_ms: Option<u64>,
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Address of `/metrics` and `/_health`.
    #[arg(long, env = "PROMETHEUS_ENDPOINT")]
    pub prometheus_endpoint: Option<String>,
    /// Second address serving `/_health` (the original worker's port 9091); `off` disables.
    #[arg(long, env = "WORKER_HEALTH_ENDPOINT")]
    pub health_endpoint: Option<String>,
    /// OTLP/HTTP collector for traces; unset means no exporter at all.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// No external side effects: HTTP answered by the worker, FS in a throw-away root,
    /// approvals auto-granted.
    #[arg(long, env = "WORKER_SANDBOX_MODE", num_args = 0..=1, default_missing_value = "true")]
    pub sandbox_mode: Option<bool>,
    /// A TOML tuning profile (see tuning/).
    #[arg(long, env = "WORKER_PROFILE")]
    pub profile: Option<PathBuf>,
    #[arg(long, env = "WORKER_FS_ROOT")]
    pub fs_root: Option<PathBuf>,
    #[arg(long, env = "WORKER_SQL_ROOT")]
    pub sql_root: Option<PathBuf>,
    #[arg(long, env = "WORKER_CONSUMER", value_enum)]
    pub consumer: Option<ConsumerMode>,
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// Subject prefix (`caf` → `caf.exec.assign.v1`).
    #[arg(long, env = "WORKER_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
    /// Deadline of a job that names none.
    #[arg(long, env = "WORKER_DEFAULT_TIMEOUT_MS")]
    pub default_timeout_ms: Option<u64>,
    /// Queue group in core mode.
    #[arg(long, env = "WORKER_QUEUE_GROUP")]
    pub queue_group: Option<String>,
    /// JetStream stream that captures the assign subject.
    #[arg(long, env = "WORKER_JS_STREAM")]
    pub js_stream: Option<String>,
    /// Durable pull consumer shared by all instances.
    #[arg(long, env = "WORKER_JS_DURABLE")]
    pub js_durable: Option<String>,
    /// Stream that keeps acks, results and DLQ entries.
    #[arg(long, env = "WORKER_JS_OUTPUT_STREAM")]
    pub js_output_stream: Option<String>,
    /// Key-value bucket of completed results (dedupe across restarts).
    #[arg(long, env = "WORKER_JS_RESULTS_BUCKET")]
    pub js_results_bucket: Option<String>,
    /// Stream that keeps approval decisions (so none is lost while a worker restarts).
    #[arg(long, env = "WORKER_JS_APPROVAL_STREAM")]
    pub js_approval_stream: Option<String>,
    /// Create missing streams/consumers/buckets (false: bind only).
    #[arg(long, env = "WORKER_JS_CREATE", num_args = 0..=1, default_missing_value = "true")]
    pub js_create: Option<bool>,
    /// JetStream replicas for created streams (3 on a three-node cluster).
    #[arg(long, env = "WORKER_JS_REPLICAS")]
    pub js_replicas: Option<usize>,
    /// How long a completed result is remembered for dedupe.
    #[arg(long, env = "WORKER_DEDUPE_TTL_S")]
    pub dedupe_ttl_s: Option<u64>,
    /// Redelivery wait of the durable consumer; in-progress acks are sent at a third of it.
    #[arg(long, env = "WORKER_JS_ACK_WAIT_MS")]
    pub js_ack_wait_ms: Option<u64>,
    /// Bound of each pool's queue; a full queue stops pulling (JetStream) or answers 4002.
    #[arg(long, env = "WORKER_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Assignments executing at once per CPU thread.
    #[arg(long, env = "WORKER_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    #[arg(long, env = "WORKER_FS_BACKEND", value_enum)]
    pub fs_backend: Option<FsBackend>,
    #[arg(long, env = "WORKER_FS_MAX_BYTES")]
    pub fs_max_bytes: Option<u64>,
    /// Extra PEM CA bundle trusted by `http.request` (besides the built-in web roots).
    #[arg(long, env = "WORKER_HTTP_CA_FILE")]
    pub http_ca_file: Option<PathBuf>,
    #[arg(long, env = "WORKER_HTTP_MAX_RESPONSE_BYTES")]
    pub http_max_response_bytes: Option<usize>,
    /// Comma-separated CIDRs `http.request` may not reach.
    #[arg(long, env = "WORKER_HTTP_DENY_CIDRS")]
    pub http_deny_cidrs: Option<String>,
    /// Comma-separated hosts `http.request` may reach (empty: any host not denied).
    #[arg(long, env = "WORKER_HTTP_ALLOW_HOSTS")]
    pub http_allow_hosts: Option<String>,
    #[arg(long, env = "WORKER_SQL_MAX_ROWS")]
    pub sql_max_rows: Option<usize>,
    #[arg(long, env = "WORKER_SQL_TIME_LIMIT_MS")]
    pub sql_time_limit_ms: Option<u64>,
    #[arg(long, env = "WORKER_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(long, env = "WORKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most assignments one tenant may have running at once on this worker (0: no limit);
    /// beyond it → 2004.
    #[arg(long, env = "WORKER_TENANT_MAX_IN_FLIGHT")]
    pub tenant_max_in_flight: Option<usize>,
    /// Most assignments one tenant may start per second on this worker (0: no limit);
    /// beyond it → 2004.
    #[arg(long, env = "WORKER_TENANT_RATE_LIMIT")]
    pub tenant_rate_limit: Option<u32>,
    /// How many assignments a tenant may start at once under `--tenant-rate-limit`
    /// (0: one second's worth).
    #[arg(long, env = "WORKER_TENANT_RATE_BURST")]
    pub tenant_rate_burst: Option<u32>,
    /// Dynamic batching: most inference requests run as one batch.
    #[arg(long, env = "WORKER_GPU_MAX_BATCH_SIZE")]
    pub gpu_max_batch_size: Option<usize>,
    /// Dynamic batching: how long a request may wait for others to join its batch.
    #[arg(long, env = "WORKER_GPU_MAX_QUEUE_DELAY_US")]
    pub gpu_max_queue_delay_us: Option<u64>,
    /// Device memory the weight cache may use per device (LRU beyond it).
    #[arg(long, env = "WORKER_GPU_MEMORY_BUDGET_MB")]
    pub gpu_memory_budget_mb: Option<u64>,
    /// Directory of the models `ai.embed` jobs name (one subdirectory per model, e.g.
    /// `all-MiniLM-L6-v2/`; scripts/ensure-model.sh installs it). Default `<data>/models`.
    #[arg(long, env = "WORKER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an NKey seed.
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// PEM CA that signs the NATS server certificate (enables TLS).
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Topology source for placement (a tree captured by scripts/capture-sysfs.sh plans
    /// another host: `beamline_worker plan --sysfs-root DIR`).
    #[arg(long, env = "WORKER_SYSFS_ROOT")]
    pub sysfs_root: Option<PathBuf>,
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
    pub profile_host: Option<crate::plan::HostClass>,
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

/// Credentials found in the userinfo of `--nats-url`.
#[derive(Default)]
struct UrlAuth {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// Takes `user:password@` or `token@` out of each comma-separated NATS URL (async-nats
/// ignores userinfo, and `nats_url` is logged and quoted in errors). The URLs keep scheme,
/// host and port; the (percent-decoded) credentials fill the [`NatsAuth`] fields that no
/// flag or variable set.
fn split_url_credentials(list: &str) -> Result<(String, UrlAuth), String> {
    let mut auth = UrlAuth::default();
    let mut urls = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (userinfo, host) = match rest[..end].rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, &rest[..end]),
        };
        match userinfo.map(|u| u.split_once(':')) {
            None => {}
            Some(Some((user, password))) => {
                auth.user.get_or_insert_with(|| percent_decode(user));
                auth.password
                    .get_or_insert_with(|| percent_decode(password));
            }
            Some(None) => {
                auth.token
                    .get_or_insert_with(|| percent_decode(userinfo.unwrap_or_default()));
            }
        }
        let tail = &rest[end..];
        urls.push(match scheme {
            Some(s) => format!("{s}://{host}{tail}"),
            None => format!("{host}{tail}"),
        });
    }
    if urls.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok((urls.join(","), auth))
}

/// `%40` → `@` (userinfo is percent-encoded in a URL); anything else is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Config {
    /// Parses the process arguments and environment and resolves them.
    pub fn from_env() -> Result<Config, ConfigError> {
        let cli = Cli::try_parse().map_err(|e| ConfigError(e.to_string()))?;
        Config::resolve(cli)
    }

    /// Resolves flags/env (already merged by clap) over the profile over defaults.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let p = match &cli.profile {
            Some(path) => Profile::load(path).map_err(|e| bad("profile", e))?,
            None => Profile::default(),
        };
        let w = &p.worker;
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                cli.$field
                    .clone()
                    .or_else(|| w.$field.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        // Placement is resolved against the topology the plan shows (crate::plan).
        let sysfs_root = cli
            .sysfs_root
            .clone()
            .unwrap_or_else(|| crate::plan::live_root().to_path_buf());
        let live = cli.sysfs_root.is_none();
        let topo = match crate::plan::Topology::read(&sysfs_root) {
            Ok(t) => Some(t),
            Err(e) if !live => return Err(bad("sysfs-root", e)),
            Err(_) => None,
        };
        let allowed = match &topo {
            Some(t) => crate::plan::allowed_cores(t, live),
            None => (0..online_cores()).collect(),
        };
        let cores = allowed.len().max(1);
        let cpu_pool_size = positive("cpu-pool-size", pick!(cpu_pool_size, cores))?;
        let io_pool_size = positive("io-pool-size", pick!(io_pool_size, cores.div_ceil(2)))?;
        let gpu_pool_size = pick!(gpu_pool_size, 0);
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
            .resolve(cpu_pool_size, 0, &allowed)
            .map_err(|e| profile_err("cpu_cores", e))?;
        let io_cores = p
            .pools
            .io_cores
            .resolve(io_pool_size, cpu_pool_size, &allowed)
            .map_err(|e| profile_err("io_cores", e))?;
        let gpu_cores = match (&p.pools.gpu_cores, &topo) {
            (Placement::Auto, Some(t)) => crate::plan::auto_gpu_cores(t, &allowed, gpu_pool_size),
            (Placement::Named(n), Some(t)) if n == "auto" => {
                crate::plan::auto_gpu_cores(t, &allowed, gpu_pool_size)
            }
            (Placement::Auto, None) => Vec::new(),
            (other, _) => other
                .resolve(gpu_pool_size, 0, &allowed)
                .map_err(|e| profile_err("gpu_cores", e))?,
        };

        let prefix = pick!(subject_prefix, "caf".to_owned());
        if prefix.is_empty() || prefix.contains(['*', '>', ' ']) || prefix.ends_with('.') {
            return Err(bad(
                "subject-prefix",
                format!("{prefix:?} is not a subject prefix"),
            ));
        }
        let nats_url = pick!(nats_url, "nats://localhost:4222".to_owned());
        let (nats_url, url_auth) =
            split_url_credentials(&nats_url).map_err(|e| bad("nats-url", e))?;
        for server in nats_url.split(',').map(str::trim) {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(bad(
                    "nats-url",
                    format!("{server:?} is not a NATS server URL"),
                ));
            }
        }
        let prometheus_endpoint = addr(
            "prometheus-endpoint",
            &pick!(prometheus_endpoint, "0.0.0.0:9090".to_owned()),
        )?;
        let health = pick!(health_endpoint, "0.0.0.0:9091".to_owned());
        let health_endpoint = match health.as_str() {
            "off" | "" => None,
            h => Some(addr("health-endpoint", h)?),
        };
        let worker_id = pick!(worker_id, default_worker_id());
        if worker_id.is_empty() {
            return Err(bad("worker-id", "must not be empty"));
        }
        let parse_cidrs = |s: &str| -> Result<Vec<ipnet::IpNet>, ConfigError> {
            s.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<ipnet::IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| bad("http-deny-cidrs", format!("{c:?} is not a CIDR")))
                })
                .collect()
        };
        let otlp_endpoint = pick!(otlp_endpoint, String::new());
        let data = PathBuf::from("beamline-data");
        let max_cpu_time_ms = positive_u64("max-cpu-time-ms", pick!(max_cpu_time_ms, 7_200_000))?;
        let default_timeout_ms =
            positive_u64("default-timeout-ms", pick!(default_timeout_ms, 30_000))?;
        let ack_wait_ms = pick!(js_ack_wait_ms, 30_000);
        if ack_wait_ms < 1000 {
            return Err(bad("js-ack-wait-ms", "must be at least 1000"));
        }
        let replicas = pick!(js_replicas, 1);
        if !(1..=5).contains(&replicas) {
            return Err(bad("js-replicas", "must be between 1 and 5"));
        }
        Ok(Config {
            worker_id,
            nats_url,
            nats_auth: NatsAuth {
                user: cli.nats_user.clone().or(url_auth.user),
                password: cli.nats_password.clone().or(url_auth.password),
                token: cli.nats_token.clone().or(url_auth.token),
                creds_file: cli.nats_creds.clone(),
                nkey_seed: match &cli.nats_nkey_file {
                    Some(f) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| bad("nats-nkey-file", format!("{}: {e}", f.display())))?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                },
                tls_ca: cli.nats_tls_ca.clone(),
            },
            consumer: pick!(consumer, ConsumerMode::Jetstream),
            subjects: Subjects::new(&prefix),
            queue_group: pick!(queue_group, "beamline_worker".to_owned()),
            js: JetStreamNames {
                stream: js_name("js-stream", pick!(js_stream, "CAF_EXEC_ASSIGN".to_owned()))?,
                durable: js_name(
                    "js-durable",
                    pick!(js_durable, "beamline_worker".to_owned()),
                )?,
                output_stream: js_name(
                    "js-output-stream",
                    pick!(js_output_stream, "CAF_EXEC_OUT".to_owned()),
                )?,
                results_bucket: js_name(
                    "js-results-bucket",
                    pick!(js_results_bucket, "CAF_EXEC_RESULTS".to_owned()),
                )?,
                approval_stream: js_name(
                    "js-approval-stream",
                    pick!(js_approval_stream, "CAF_HUMAN_APPROVAL".to_owned()),
                )?,
                create: pick!(js_create, true),
                replicas,
                ack_wait: Duration::from_millis(ack_wait_ms),
            },
            cpu_pool_size,
            io_pool_size,
            gpu_pool_size,
            cpu_cores,
            io_cores,
            queue_capacity: positive("queue-capacity", pick!(queue_capacity, 4096))?,
            max_in_flight: positive("max-in-flight", pick!(max_in_flight, 1024))?,
            max_memory_mb: positive_u64("max-memory-mb", pick!(max_memory_mb, 2048))?,
            max_job_time: Duration::from_millis(max_cpu_time_ms),
            default_timeout: Duration::from_millis(default_timeout_ms),
            dedupe_ttl: Duration::from_secs(positive_u64(
                "dedupe-ttl-s",
                pick!(dedupe_ttl_s, 86_400),
            )?),
            prometheus_endpoint,
            health_endpoint,
            otlp_endpoint: (!otlp_endpoint.is_empty()).then_some(otlp_endpoint),
            sandbox: pick!(sandbox_mode, false),
            fs_root: pick!(fs_root, data.join("fs")),
            sql_root: pick!(sql_root, data.join("sql")),
            fs_backend: pick!(fs_backend, FsBackend::Auto),
            fs_max_bytes: positive_u64("fs-max-bytes", pick!(fs_max_bytes, 64 << 20))?,
            http_ca_file: pick!(http_ca_file, PathBuf::new())
                .to_str()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            http_max_response_bytes: positive(
                "http-max-response-bytes",
                pick!(http_max_response_bytes, 10 << 20),
            )?,
            http_deny_cidrs: parse_cidrs(&pick!(http_deny_cidrs, DEFAULT_DENY_CIDRS.to_owned()))?,
            http_allow_hosts: pick!(http_allow_hosts, String::new())
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            sql_max_rows: positive("sql-max-rows", pick!(sql_max_rows, 10_000))?,
            sql_time_limit: Duration::from_millis(positive_u64(
                "sql-time-limit-ms",
                pick!(sql_time_limit_ms, 5_000),
            )?),
            heartbeat_interval: Duration::from_millis(positive_u64(
                "heartbeat-interval-ms",
                pick!(heartbeat_interval_ms, 5_000),
            )?),
            shutdown_grace: Duration::from_millis(pick!(shutdown_grace_ms, 10_000)),
            log_format: pick!(log_format, LogFormat::Json),
            profile_name: p.name.clone(),
            tenant_max_in_flight: pick!(tenant_max_in_flight, 0),
            tenant_rate_limit: pick!(tenant_rate_limit, 0),
            tenant_rate_burst: pick!(tenant_rate_burst, 0),
            gpu_max_batch_size: positive("gpu-max-batch-size", pick!(gpu_max_batch_size, 64))?,
            gpu_max_queue_delay: Duration::from_micros(pick!(gpu_max_queue_delay_us, 500)),
            gpu_memory_budget_mb: positive_u64(
                "gpu-memory-budget-mb",
                pick!(gpu_memory_budget_mb, 4096),
            )?,
            // Operator-only (flag or env), not a profile key: a profile is shared, the
            // models installed on a host are not.
            models_dir: cli
                .models_dir
                .clone()
                .unwrap_or_else(|| data.join("models")),
            sysfs_root,
            allowed_cores: allowed,
            gpu_cores,
            profile_path: cli.profile.clone(),
            profile_hardware: p.hardware.clone(),
            profile_host: p.host.clone(),
        })
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
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
}
