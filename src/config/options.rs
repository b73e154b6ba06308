//! Every option of the worker, declared once: its flag (the field name in kebab case), its
//! environment variable, its help line, its default and how the default reads in `--help`.
//! The `options!` table generates the clap [`Cli`] (every field optional, so that the
//! profile can sit between the environment and the default), the profile's `[worker]`
//! section ([`WorkerSection`], unknown keys refused) and [`Options`], each value after
//! the precedence flag > environment > profile > default. `Config::resolve` validates
//! [`Options`] into the typed `Config`.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use super::{ConsumerMode, FsBackend, LogFormat, DEFAULT_DENY_CIDRS};

/// What the computed defaults depend on: the host (placement reads its topology first).
#[derive(Debug)]
pub(super) struct Defaults {
    /// Cores this process may use (at least 1).
    pub(super) cores: usize,
    /// Where data goes unless a flag says otherwise.
    pub(super) data: PathBuf,
}

impl Defaults {
    pub(super) fn new(cores: usize) -> Defaults {
        Defaults {
            cores: cores.max(1),
            data: PathBuf::from("beamline-data"),
        }
    }
}

/// The help line of one option: its doc comment on one line, then its default.
fn help(doc: &[&str], default: &str) -> String {
    let text: Vec<&str> = doc.iter().map(|l| l.trim()).collect();
    format!("{} [default: {default}]", text.join(" "))
}

const WORKER_HEADING: &str =
    "Worker options (flag, environment, or a key of the profile's [worker])";
const HOST_HEADING: &str = "Host options (flag or environment only)";

/// Entries: `/// help`, `name: Type = default, shown "default in --help", env "VAR"`, then
/// optionally `, clap(..)` with more clap attributes. Sections: `profile` (flag, env or
/// profile), `flag` (flag or env, with a default), `unset` (flag or env; no default, or
/// one `Config::resolve` computes, as `shown` says).
macro_rules! options {
    (
        defaults($d:ident);
        profile {$(
            $(#[doc = $pdoc:literal])+
            $p:ident: $pty:ty = $pdef:expr, shown $pshown:expr, env $penv:literal
                $(, clap($($pclap:tt)*))?;
        )*}
        flag {$(
            $(#[doc = $fdoc:literal])+
            $f:ident: $fty:ty = $fdef:expr, shown $fshown:expr, env $fenv:literal
                $(, clap($($fclap:tt)*))?;
        )*}
        unset {$(
            $(#[doc = $udoc:literal])+
            $u:ident: $uty:ty, shown $ushown:expr, env $uenv:literal
                $(, clap($($uclap:tt)*))?;
        )*}
    ) => {
        /// Command line. Every option is optional here so that the profile can sit between
        /// the environment and the default.
        #[derive(Debug, Parser, Default)]
        #[command(
            name = "beamline_worker",
            version,
            about = "CAF execution worker",
            after_help = "Subcommand: `beamline_worker plan [FLAGS] [--json]` prints the thread placement these flags give and exits."
        )]
        pub struct Cli {
            $(
                #[arg(long, env = $penv, help = help(&[$($pdoc),+], $pshown),
                      help_heading = WORKER_HEADING $(, $($pclap)*)?)]
                pub $p: Option<$pty>,
            )*
            $(
                #[arg(long, env = $fenv, help = help(&[$($fdoc),+], $fshown),
                      help_heading = HOST_HEADING $(, $($fclap)*)?)]
                pub $f: Option<$fty>,
            )*
            $(
                #[arg(long, env = $uenv, help = help(&[$($udoc),+], $ushown),
                      help_heading = HOST_HEADING $(, $($uclap)*)?)]
                pub $u: Option<$uty>,
            )*
        }
        /// Settings a profile may give (`[worker]`); each one is also a flag of the same name.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct WorkerSection {
            $( $(#[doc = $pdoc])+ pub $p: Option<$pty>, )*
        }
        /// Every option that has a default, after precedence; not yet validated.
        #[derive(Debug)]
        pub(super) struct Options {
            $( $(#[doc = $pdoc])+ pub(super) $p: $pty, )*
            $( $(#[doc = $fdoc])+ pub(super) $f: $fty, )*
        }
        #[cfg(test)]
        impl Options {
            /// (name, the default as `Debug` prints it, the default as `--help` shows it).
            pub(super) fn defaults_shown($d: &Defaults) -> Vec<(&'static str, String, String)> {
                vec![
                    $( (stringify!($p), format!("{:?}", { let v: $pty = $pdef; v }), $pshown.to_string()), )*
                    $( (stringify!($f), format!("{:?}", { let v: $fty = $fdef; v }), $fshown.to_string()), )*
                ]
            }
        }
        impl Options {
            /// Flag (or environment, which clap has merged) > profile > default.
            pub(super) fn pick(cli: &Cli, profile: &WorkerSection, $d: &Defaults) -> Options {
                Options {
                    $( $p: cli.$p.clone().or_else(|| profile.$p.clone()).unwrap_or_else(|| $pdef), )*
                    $( $f: cli.$f.clone().unwrap_or_else(|| $fdef), )*
                }
            }
        }
    };
}

options! {
    defaults(d);
    profile {
        /// CPU pool threads (pinned).
        cpu_pool_size: usize = d.cores, shown "the cores this process may use", env "WORKER_CPU_POOL_SIZE";
        /// GPU pool slots (0 disables the pool).
        gpu_pool_size: usize = 0, shown "0", env "WORKER_GPU_POOL_SIZE";
        /// IO pool threads, one io_uring ring each.
        io_pool_size: usize = d.cores.div_ceil(2), shown "1 per 2 usable cores", env "WORKER_IO_POOL_SIZE";
        /// Memory budget: admission stops taking work above it.
        max_memory_mb: u64 = 2048, shown "2048", env "WORKER_MAX_MEMORY_MB";
        /// Longest any one job may run (its deadline is clamped to this).
        max_cpu_time_ms: u64 = 7_200_000, shown "7200000 (2 h)", env "WORKER_MAX_CPU_TIME_MS";
        /// NATS server URLs, comma-separated; `user:password@` or `token@` in a URL is taken
        /// out as credentials.
        nats_url: String = "nats://localhost:4222".into(), shown "nats://localhost:4222", env "NATS_URL";
        /// Address of `/metrics` and `/_health`.
        prometheus_endpoint: String = "0.0.0.0:9090".into(), shown "0.0.0.0:9090", env "PROMETHEUS_ENDPOINT";
        /// Second address serving `/_health` (the original worker's port 9091); `off` disables.
        health_endpoint: String = "0.0.0.0:9091".into(), shown "0.0.0.0:9091", env "WORKER_HEALTH_ENDPOINT";
        /// OTLP/HTTP collector for traces.
        otlp_endpoint: String = String::new(), shown "none: no exporter at all", env "OTEL_EXPORTER_OTLP_ENDPOINT";
        /// No external side effects: HTTP answered by the worker, FS in a throw-away root,
        /// approvals auto-granted.
        sandbox_mode: bool = false, shown "false", env "WORKER_SANDBOX_MODE",
            clap(num_args = 0..=1, default_missing_value = "true");
        /// Root of the files `fs.*` blocks may read and write (a sandbox per tenant).
        fs_root: PathBuf = d.data.join("fs"), shown "beamline-data/fs", env "WORKER_FS_ROOT";
        /// Root of the SQLite databases `sql.query` may open (read-only).
        sql_root: PathBuf = d.data.join("sql"), shown "beamline-data/sql", env "WORKER_SQL_ROOT";
        /// How assignments are taken: a shared JetStream durable (at-least-once) or a core
        /// NATS queue group (at-most-once).
        consumer: ConsumerMode = ConsumerMode::Jetstream, shown "jetstream", env "WORKER_CONSUMER",
            clap(value_enum);
        /// This worker's id in heartbeats, logs and results.
        worker_id: String = default_worker_id(), shown "<hostname>-<pid>", env "WORKER_ID";
        /// Subject prefix (`caf` → `caf.exec.assign.v1`).
        subject_prefix: String = "caf".into(), shown "caf", env "WORKER_SUBJECT_PREFIX";
        /// Deadline of a job that names none.
        default_timeout_ms: u64 = 30_000, shown "30000", env "WORKER_DEFAULT_TIMEOUT_MS";
        /// Queue group in core mode.
        queue_group: String = "beamline_worker".into(), shown "beamline_worker", env "WORKER_QUEUE_GROUP";
        /// JetStream stream that captures the assign subject.
        js_stream: String = "CAF_EXEC_ASSIGN".into(), shown "CAF_EXEC_ASSIGN", env "WORKER_JS_STREAM";
        /// Durable pull consumer shared by all instances.
        js_durable: String = "beamline_worker".into(), shown "beamline_worker", env "WORKER_JS_DURABLE";
        /// Stream that keeps acks, results and DLQ entries.
        js_output_stream: String = "CAF_EXEC_OUT".into(), shown "CAF_EXEC_OUT", env "WORKER_JS_OUTPUT_STREAM";
        /// Key-value bucket of completed results (dedupe across restarts).
        js_results_bucket: String = "CAF_EXEC_RESULTS".into(), shown "CAF_EXEC_RESULTS", env "WORKER_JS_RESULTS_BUCKET";
        /// Stream that keeps approval decisions (so none is lost while a worker restarts).
        js_approval_stream: String = "CAF_HUMAN_APPROVAL".into(), shown "CAF_HUMAN_APPROVAL", env "WORKER_JS_APPROVAL_STREAM";
        /// Create missing streams/consumers/buckets (false: bind only).
        js_create: bool = true, shown "true", env "WORKER_JS_CREATE",
            clap(num_args = 0..=1, default_missing_value = "true");
        /// JetStream replicas for created streams (3 on a three-node cluster).
        js_replicas: usize = 1, shown "1", env "WORKER_JS_REPLICAS";
        /// How long a completed result is remembered for dedupe.
        dedupe_ttl_s: u64 = 86_400, shown "86400 (a day)", env "WORKER_DEDUPE_TTL_S";
        /// Redelivery wait of the durable consumer; in-progress acks are sent at a third of it.
        js_ack_wait_ms: u64 = 30_000, shown "30000", env "WORKER_JS_ACK_WAIT_MS";
        /// Bound of each pool's queue; a full queue stops pulling (JetStream) or answers 4002.
        queue_capacity: usize = 4096, shown "4096", env "WORKER_QUEUE_CAPACITY";
        /// Assignments executing at once per CPU thread.
        max_in_flight: usize = 1024, shown "1024", env "WORKER_MAX_IN_FLIGHT";
        /// Core mode: CPU threads always in the queue group. More join while the load needs
        /// them and leave once it has passed (the cpu pool size keeps every one in).
        min_lanes: usize = 1, shown "1", env "WORKER_MIN_LANES";
        /// File backend of `fs.*` blocks (`auto`: io_uring when the kernel allows it).
        fs_backend: FsBackend = FsBackend::Auto, shown "auto", env "WORKER_FS_BACKEND",
            clap(value_enum);
        /// Largest file `fs.*` blocks read or write, in bytes.
        fs_max_bytes: u64 = 64 << 20, shown "67108864 (64 MiB)", env "WORKER_FS_MAX_BYTES";
        /// Extra PEM CA bundle trusted by `http.request` (besides the built-in web roots).
        http_ca_file: PathBuf = PathBuf::new(), shown "none", env "WORKER_HTTP_CA_FILE";
        /// Largest response body `http.request` reads, in bytes.
        http_max_response_bytes: usize = 10 << 20, shown "10485760 (10 MiB)", env "WORKER_HTTP_MAX_RESPONSE_BYTES";
        /// Comma-separated CIDRs `http.request` may not reach.
        http_deny_cidrs: String = DEFAULT_DENY_CIDRS.into(), shown DEFAULT_DENY_CIDRS, env "WORKER_HTTP_DENY_CIDRS";
        /// Comma-separated hosts `http.request` may reach (empty: any host not denied).
        http_allow_hosts: String = String::new(), shown "empty", env "WORKER_HTTP_ALLOW_HOSTS";
        /// Most rows `sql.query` returns.
        sql_max_rows: usize = 10_000, shown "10000", env "WORKER_SQL_MAX_ROWS";
        /// Longest a `sql.query` statement may run.
        sql_time_limit_ms: u64 = 5_000, shown "5000", env "WORKER_SQL_TIME_LIMIT_MS";
        /// Interval of the heartbeats on `<prefix>.worker.heartbeat.v1`.
        heartbeat_interval_ms: u64 = 5_000, shown "5000", env "WORKER_HEARTBEAT_INTERVAL_MS";
        /// How long a stop may take: running jobs finish or are handed back within it.
        shutdown_grace_ms: u64 = 10_000, shown "10000", env "WORKER_SHUTDOWN_GRACE_MS";
        /// Log line format on stderr.
        log_format: LogFormat = LogFormat::Json, shown "json", env "WORKER_LOG_FORMAT",
            clap(value_enum);
        /// Most assignments one tenant may have running at once on this worker (0: no limit);
        /// beyond it → 2004.
        tenant_max_in_flight: usize = 0, shown "0", env "WORKER_TENANT_MAX_IN_FLIGHT";
        /// Most assignments one tenant may start per second on this worker (0: no limit);
        /// beyond it → 2004.
        tenant_rate_limit: u32 = 0, shown "0", env "WORKER_TENANT_RATE_LIMIT";
        /// How many assignments a tenant may start at once under `--tenant-rate-limit`
        /// (0: one second's worth).
        tenant_rate_burst: u32 = 0, shown "0", env "WORKER_TENANT_RATE_BURST";
        /// Dynamic batching: most inference requests run as one batch.
        gpu_max_batch_size: usize = 64, shown "64", env "WORKER_GPU_MAX_BATCH_SIZE";
        /// Dynamic batching: how long a request may wait for others to join its batch.
        gpu_max_queue_delay_us: u64 = 500, shown "500", env "WORKER_GPU_MAX_QUEUE_DELAY_US";
        /// Device memory the weight cache may use per device (LRU beyond it).
        gpu_memory_budget_mb: u64 = 4096, shown "4096", env "WORKER_GPU_MEMORY_BUDGET_MB";
    }
    flag {
        /// Directory of the models `ai.embed` jobs name (one subdirectory per model, e.g.
        /// `all-MiniLM-L6-v2/`; scripts/ensure-model.sh installs it). Not a profile key: a
        /// profile is shared, the models installed on a host are not.
        models_dir: PathBuf = d.data.join("models"), shown "beamline-data/models", env "WORKER_MODELS_DIR";
    }
    unset {
        /// A TOML tuning profile (see tuning/).
        profile: PathBuf, shown "none", env "WORKER_PROFILE";
        /// NATS user (with `--nats-password`).
        nats_user: String, shown "none, or the user in --nats-url", env "NATS_USER";
        /// NATS password.
        nats_password: String, shown "none, or the password in --nats-url", env "NATS_PASSWORD",
            clap(hide_env_values = true);
        /// NATS token.
        nats_token: String, shown "none, or the token in --nats-url", env "NATS_TOKEN",
            clap(hide_env_values = true);
        /// NATS credentials file (JWT + NKey seed).
        nats_creds: PathBuf, shown "none", env "NATS_CREDS";
        /// File holding an NKey seed.
        nats_nkey_file: PathBuf, shown "none", env "NATS_NKEY_FILE";
        /// PEM CA that signs the NATS server certificate (enables TLS).
        nats_tls_ca: PathBuf, shown "none: TLS only as the URL's scheme asks", env "NATS_TLS_CA";
        /// Topology source for placement (a tree captured by scripts/capture-sysfs.sh plans
        /// another host: `beamline_worker plan --sysfs-root DIR`).
        sysfs_root: PathBuf, shown "/sys", env "WORKER_SYSFS_ROOT";
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}
