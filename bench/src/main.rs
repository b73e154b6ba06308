//! `beamline-bench`: load generator and CP3-LC gate check for `beamline_worker`.
//!
//! Every measurement runs the same load twice on the same broker: against the built-in
//! null-echo worker (the ceiling for any worker on this host) and against the real worker,
//! and reports the worker's figures also as ratios to the null-echo ones.

mod driver;
mod fixtures;
mod null_worker;
mod plain_worker;
mod procs;
mod report;
mod scenario;
mod stats;
mod tune;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use beamline_testkit::http_client;
use beamline_testkit::ports::try_free_port;
use beamline_testkit::NatsServer;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::driver::{LoadSpec, Observed};
use crate::null_worker::{Subjects, NULL_PREFIX};
use crate::procs::ChildGuard;
use crate::report::{Meta, PlotPanel, Report, SoakReport};
use crate::scenario::{BlockType, PayloadBuilder, Scenario};
use crate::stats::{PairReport, RunOutcome};

/// Exit code when the CP3-LC gate is missed.
const EXIT_GATE_MISSED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "beamline-bench",
    version,
    about = "Load generator and CP3-LC gate check for beamline_worker (with a null-echo baseline in every run)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Only the null-echo baselines (core and jetstream unless --mode): no worker needed.
    Null(Box<RunArgs>),
    /// Choose pool sizes and core placement by measuring them; writes a tuning/ profile.
    Tune(Box<tune::TuneArgs>),
    /// Internal: the null-echo worker process the bench spawns.
    #[command(hide = true)]
    NullWorker(NullWorkerArgs),
    /// Internal: the plain-loop worker process the bench spawns (core mode).
    #[command(hide = true)]
    PlainWorker(PlainWorkerArgs),
}

#[derive(Args, Debug, Clone)]
struct PlainWorkerArgs {
    #[arg(long)]
    nats_url: String,
    #[arg(long)]
    fs_root: PathBuf,
    #[arg(long)]
    sql_root: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Core,
    Jetstream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Core => "core",
            Mode::Jetstream => "jetstream",
        }
    }
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Attach to this broker instead of starting a nats-server (must have JetStream for
    /// --mode jetstream). Only 127.0.0.1 is sensible.
    #[arg(long)]
    nats_url: Option<String>,
    /// nats-server executable to start (PATH, then /usr/sbin).
    #[arg(long, default_value = "nats-server")]
    nats_server_bin: PathBuf,
    /// With --nats-url: pid of that broker, to report its CPU per task.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// The worker binary.
    #[arg(long, default_value = "target/release/beamline_worker")]
    worker_bin: PathBuf,
    /// Passed to the worker as --profile.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Extra argument for the worker (repeatable), e.g. --worker-arg=--default-timeout-ms=5000.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Worker --cpu-pool-size (default: not passed, the worker's own default).
    #[arg(long)]
    cpu_pool_size: Option<usize>,
    /// Worker --io-pool-size (default: not passed, the worker's own default).
    #[arg(long)]
    io_pool_size: Option<usize>,
    /// Worker --gpu-pool-size (default: not passed, except 1 when an `inference` scenario
    /// runs and neither --profile nor --worker-arg nor WORKER_GPU_POOL_SIZE sets it: the
    /// worker's default, 0, has no GPU pool to run ai.inference on).
    #[arg(long)]
    gpu_pool_size: Option<usize>,
    /// RUST_LOG for the worker (its log goes to <out>/logs/). Default: unset, so the worker
    /// runs at its own default level (info), as a deployment does.
    #[arg(long)]
    worker_rust_log: Option<String>,
    /// Skip the plain-loop baseline (core mode; run beside the null echo by default).
    #[arg(long)]
    no_plain: bool,
    /// Consumer mode(s), comma-separated (default: core; `null` defaults to core,jetstream).
    #[arg(long, value_enum, value_delimiter = ',')]
    mode: Vec<Mode>,
    /// Scenario(s), comma-separated (default: all five but inference; `inference` =
    /// ai.inference on the worker's GPU pool, CUDA or its CPU fallback, no plain-loop row).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Most assignments in flight at once.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Offered rate in tasks/s (default: flat out within --window).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load per measured run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Tasks per measured run (instead of --duration).
    #[arg(long)]
    count: Option<u64>,
    /// Unmeasured warm-up seconds before each measured run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for outstanding results after the last publish.
    #[arg(long, default_value_t = 15.0)]
    drain_timeout: f64,
    /// Measured runs per target and measurement (interleaved null, worker, null, ...);
    /// figures are medians over them.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Run the CP3-LC gate plan (mix flat out, then mix at --gate-rate) and exit 3 if missed.
    #[arg(long)]
    gate: bool,
    /// Offered rate of the gate's latency phase.
    #[arg(long, default_value_t = 500.0)]
    gate_rate: f64,
    /// Soak: mix at --rate (default 500/s) for this many minutes, sampling worker RSS.
    #[arg(long)]
    soak: Option<f64>,
    /// Soak sampling interval, seconds.
    #[arg(long, default_value_t = 5.0)]
    sample_secs: f64,
    /// Soak warm-up excluded from the RSS flatness verdict, seconds (default: min(60, 20 %)).
    #[arg(long)]
    soak_warmup: Option<f64>,
    /// Report directory (JSON, SVGs, logs).
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Seconds to wait for a worker to answer its first probe.
    #[arg(long, default_value_t = 60.0)]
    ready_timeout: f64,
    /// Null-echo JetStream consumer: pull batch size.
    #[arg(long, default_value_t = 256)]
    null_batch: usize,
    /// Null-echo worker runtime threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    null_threads: usize,
}

#[derive(Args, Debug, Clone)]
struct NullWorkerArgs {
    #[arg(long)]
    nats_url: String,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value = NULL_PREFIX)]
    prefix: String,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 2048)]
    max_inflight: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, null_only) = match cli.cmd {
        Some(Cmd::NullWorker(a)) => return null_worker_main(&a),
        Some(Cmd::PlainWorker(a)) => return plain_worker_main(a),
        Some(Cmd::Tune(a)) => {
            return match tune::tune_main(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::Null(a)) => (*a, true),
        None => (cli.run, false),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| anyhow!("signal handler: {e}"))?;
        // Dropping `bench(..)` on a signal drops every ChildGuard and temp dir it owns.
        tokio::select! {
            r = bench(args, null_only) => r,
            _ = tokio::signal::ctrl_c() => { eprintln!("\ninterrupted: stopping children"); Ok(ExitCode::from(130)) }
            _ = term.recv() => { eprintln!("\nterminated: stopping children"); Ok(ExitCode::from(143)) }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plain_worker_main(a: PlainWorkerArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plain-worker: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(plain_worker::serve(&a.nats_url, a.fs_root, a.sql_root)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plain-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn null_worker_main(a: &NullWorkerArgs) -> ExitCode {
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("null-worker: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(null_worker::serve(
        &a.nats_url,
        a.mode == Mode::Jetstream,
        &a.prefix,
        a.batch,
        a.max_inflight,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("null-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One step of the plan: a measurement run against the null-echo worker and the worker.
#[derive(Debug, Clone)]
struct Step {
    phase: &'static str,
    spec: LoadSpec,
    /// Soak: the worker run lasts this long instead of spec.duration (the null baseline
    /// keeps spec.duration).
    worker_duration: Option<Duration>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn plan(args: &RunArgs) -> Vec<Step> {
    let base = |scenario, rate| LoadSpec {
        scenario,
        window: args.window,
        rate,
        duration: args.count.is_none().then(|| secs(args.duration)),
        count: args.count,
        drain_timeout: secs(args.drain_timeout),
        sample_every: None,
    };
    if args.gate {
        return vec![
            Step {
                phase: "throughput",
                spec: base(Scenario::Mix, None),
                worker_duration: None,
            },
            Step {
                phase: "latency",
                spec: base(Scenario::Mix, Some(args.gate_rate)),
                worker_duration: None,
            },
        ];
    }
    if let Some(minutes) = args.soak {
        let mut spec = base(Scenario::Mix, Some(args.rate.unwrap_or(500.0)));
        spec.count = None;
        spec.duration = Some(secs(args.duration));
        spec.sample_every = Some(secs(args.sample_secs.max(0.5)));
        return vec![Step {
            phase: "soak",
            spec,
            worker_duration: Some(secs(minutes * 60.0)),
        }];
    }
    let scenarios = if args.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    scenarios
        .into_iter()
        .map(|s| Step {
            phase: "run",
            spec: base(s, args.rate),
            worker_duration: None,
        })
        .collect()
}

/// Writes a run's timeline (`driver::TIMELINE_ENV`) as `<dir>/<label>.csv`, the label's
/// characters other than letters, digits and `#` made `-`: `sent_us,latency_us` per result.
fn write_timeline(label: &str, out: &RunOutcome) {
    let (Some(dir), Some(rows)) = (std::env::var_os(driver::TIMELINE_ENV), &out.timeline) else {
        return;
    };
    let name: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '#' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let path = std::path::Path::new(&dir).join(format!("{name}.csv"));
    let mut text = String::with_capacity(rows.len() * 16 + 32);
    text.push_str("sent_us,latency_us\n");
    for (sent, lat) in rows {
        text.push_str(&format!("{sent},{lat}\n"));
    }
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("timeline {}: {e}", path.display());
    }
}

fn progress_bar(spec: &LoadSpec, label: String) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let len = match (spec.count, spec.duration) {
        (Some(c), _) => c,
        (None, Some(d)) => (d.as_secs_f64() * 10.0) as u64,
        _ => 0,
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(label);
    pb
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Ctx {
    client: async_nats::Client,
    payloads: PayloadBuilder,
    tag_counter: u64,
    broker_pid: Option<u32>,
}

impl Ctx {
    fn tag(&mut self) -> String {
        self.tag_counter += 1;
        driver::unique_tag(self.tag_counter)
    }

    /// Warm-up (unmeasured), then one measured run.
    async fn measure(
        &mut self,
        subjects: &Subjects,
        spec: &LoadSpec,
        warmup: f64,
        worker: &mut ChildGuard,
        is_null: bool,
        label: String,
    ) -> Result<RunOutcome> {
        let observed = Observed {
            worker_pid: Some(worker.pid()),
            broker_pid: self.broker_pid,
        };
        if warmup > 0.0 {
            let w = LoadSpec {
                duration: Some(secs(warmup)),
                count: None,
                sample_every: None,
                drain_timeout: spec.drain_timeout,
                ..spec.clone()
            };
            let tag = self.tag();
            driver::drive(
                &self.client,
                subjects,
                &self.payloads,
                &w,
                &tag,
                observed,
                !is_null,
                &ProgressBar::hidden(),
            )
            .await?;
        }
        let pb = progress_bar(spec, label.clone());
        let tag = self.tag();
        let out = driver::drive(
            &self.client,
            subjects,
            &self.payloads,
            spec,
            &tag,
            observed,
            !is_null,
            &pb,
        )
        .await;
        pb.finish_and_clear();
        let out = out?;
        write_timeline(&label, &out);
        if let Some(st) = worker.exited() {
            bail!(
                "{} exited during the run ({st}):\n{}",
                worker.name(),
                worker.log_tail(3000)
            );
        }
        Ok(out)
    }
}

fn short(o: &RunOutcome) -> String {
    let (_, res) = o.merged();
    let s = stats::summarize(&res);
    format!(
        "{:.0}/s  result p50 {:.2} ms  p99 {:.2} ms  errors {}  lost {}",
        if o.elapsed_s > 0.0 {
            o.completed as f64 / o.elapsed_s
        } else {
            0.0
        },
        s.p50_ms,
        s.p99_ms,
        o.types.iter().map(|t| t.errors()).sum::<u64>(),
        o.lost
    )
}

fn panel(title: String, null: &[RunOutcome], worker: &[RunOutcome]) -> PlotPanel {
    let mut series = Vec::new();
    for b in BlockType::ALL {
        for (name, runs, is_null) in [("worker", worker, false), ("null", null, true)] {
            let mut h = stats::new_histogram();
            for r in runs {
                let _ = h.add(&r.types[b.index()].result);
            }
            if !h.is_empty() {
                series.push(report::Series {
                    label: format!("{name} {}", b.job_type()),
                    is_null,
                    points: report::percentile_curve(&h),
                });
            }
        }
    }
    PlotPanel { title, series }
}

fn spawn_null_worker(mode: Mode, url: &str, args: &RunArgs, log: &Path) -> Result<ChildGuard> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("null-worker")
        .args(["--nats-url", url, "--mode", mode.name()])
        .args(["--batch", &args.null_batch.to_string()])
        .args(["--threads", &args.null_threads.to_string()]);
    ChildGuard::spawn(
        &format!("null-echo worker ({})", mode.name()),
        &mut cmd,
        Some(log),
    )
}

fn spawn_plain_worker(url: &str, fx: &fixtures::Fixtures, log: &Path) -> Result<ChildGuard> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("plain-worker")
        .args(["--nats-url", url])
        .arg("--fs-root")
        .arg(&fx.fs_root)
        .arg("--sql-root")
        .arg(&fx.sql_root);
    ChildGuard::spawn("plain-loop worker", &mut cmd, Some(log))
}

/// The `--gpu-pool-size` to pass the worker: the bench's own flag, else 1 when the plan runs
/// ai.inference and nothing else (profile key, worker arg, `WORKER_GPU_POOL_SIZE` in the
/// worker's environment: `env_sets_it`) sizes the pool.
fn gpu_pool_arg(args: &RunArgs, runs_inference: bool, env_sets_it: bool) -> Option<usize> {
    if args.gpu_pool_size.is_some() || !runs_inference {
        return args.gpu_pool_size;
    }
    let in_args = args
        .worker_args
        .iter()
        .any(|a| a.starts_with("--gpu-pool-size"));
    let in_profile = args.profile.as_ref().is_some_and(|p| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            t.lines()
                .any(|l| l.trim_start().starts_with("gpu_pool_size"))
        })
    });
    (!(in_args || env_sets_it || in_profile)).then_some(1)
}

fn spawn_worker(
    mode: Mode,
    url: &str,
    args: &RunArgs,
    gpu_pool: Option<usize>,
    fx: &fixtures::Fixtures,
    ports: (u16, u16),
    log: &Path,
) -> Result<ChildGuard> {
    let mut cmd = Command::new(&args.worker_bin);
    cmd.args(["--nats-url", url, "--consumer", mode.name()])
        .arg("--fs-root")
        .arg(&fx.fs_root)
        .arg("--sql-root")
        .arg(&fx.sql_root)
        .args(["--prometheus-endpoint", &format!("127.0.0.1:{}", ports.0)])
        .args(["--health-endpoint", &format!("127.0.0.1:{}", ports.1)])
        .args(["--worker-id", "bench-worker"]);
    // Pool sizes only when asked for: what is measured is the worker at its defaults.
    if let Some(n) = args.cpu_pool_size {
        cmd.args(["--cpu-pool-size", &n.to_string()]);
    }
    if let Some(n) = args.io_pool_size {
        cmd.args(["--io-pool-size", &n.to_string()]);
    }
    if let Some(n) = gpu_pool {
        cmd.args(["--gpu-pool-size", &n.to_string()]);
    }
    if let Some(p) = &args.profile {
        cmd.arg("--profile").arg(p);
    }
    cmd.args(&args.worker_args);
    // The worker's defaults are what is measured: the bench's own RUST_LOG is not passed on.
    match &args.worker_rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    ChildGuard::spawn(&format!("worker ({})", mode.name()), &mut cmd, Some(log))
}

async fn bench(args: RunArgs, null_only: bool) -> Result<ExitCode> {
    let stamp = unix_now();
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let modes: Vec<Mode> = if !args.mode.is_empty() {
        // Core first: once a JetStream stream captures caf.exec.assign.v1, a later core
        // run would also pay for storing every assignment.
        let mut m = args.mode.clone();
        m.sort_by_key(|m| *m == Mode::Jetstream);
        m.dedup();
        m
    } else if null_only {
        vec![Mode::Core, Mode::Jetstream]
    } else {
        vec![Mode::Core]
    };
    let steps = plan(&args);
    let mut notes = Vec::new();
    if args.gate && (args.rate.is_some() || !args.scenario.is_empty()) {
        notes.push("--gate runs its own plan: --rate and --scenario were ignored".to_string());
    }
    let worker_found = !null_only && args.worker_bin.is_file();
    let gpu_pool = gpu_pool_arg(
        &args,
        steps.iter().any(|s| s.spec.scenario == Scenario::Inference),
        std::env::var_os("WORKER_GPU_POOL_SIZE").is_some(),
    );
    if let (Some(n), None) = (gpu_pool, args.gpu_pool_size) {
        notes.push(format!(
            "inference: the worker was given --gpu-pool-size {n} (its default, 0, has no GPU pool)"
        ));
    }
    if !null_only && !worker_found {
        notes.push(format!(
            "worker binary {} not found: null-echo baseline only",
            args.worker_bin.display()
        ));
    }
    for n in &notes {
        eprintln!("note: {n}");
    }

    let fx = fixtures::create_fixtures()?;
    let upstream = beamline_testkit::http_server::Responder::start().await?;
    let store = tempfile::Builder::new().prefix("bench-nats-").tempdir()?;
    let (broker, url, broker_pid, nats_version) = match &args.nats_url {
        Some(u) => (None, u.clone(), args.broker_pid, String::from("attached")),
        None => {
            let b = NatsServer::builder()
                .exe(&args.nats_server_bin)
                .store_dir(store.path())
                .log(&logs.join(format!("{stamp}-nats.log")))
                .die_with_parent()
                .ready_timeout(Duration::from_secs(15))
                .start()
                .context("start nats-server")?;
            let (url, pid, v) = (b.url(), b.pid(), b.version());
            (Some(b), url, pid, v)
        }
    };
    let (cpu_model, kernel) = report::this_host();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "host: {cpu_model}, {cpus} CPUs, Linux {kernel}; broker {url} ({nats_version}); http upstream 127.0.0.1:{}",
        upstream.port
    );
    let client = async_nats::ConnectOptions::new()
        .name("beamline-bench")
        .connect(url.as_str())
        .await
        .with_context(|| format!("connect {url}"))?;
    let mut ctx = Ctx {
        client,
        payloads: PayloadBuilder::new(upstream.port),
        tag_counter: 0,
        broker_pid,
    };
    let null_subjects = Subjects::with_prefix(NULL_PREFIX);
    let plain_subjects = Subjects::with_prefix(plain_worker::PLAIN_PREFIX);
    let worker_subjects = Subjects::with_prefix("caf");
    let ready_timeout = secs(args.ready_timeout);
    let repeats = args.repeat.max(1);

    let mut pairs: Vec<PairReport> = Vec::new();
    let mut panels: Vec<PlotPanel> = Vec::new();
    let mut soaks: Vec<SoakReport> = Vec::new();
    let mut health = Vec::new();

    for mode in &modes {
        let mode = *mode;
        let mut null_child = spawn_null_worker(
            mode,
            &url,
            &args,
            &logs.join(format!("{stamp}-null-{}.log", mode.name())),
        )?;
        let tag = ctx.tag();
        let t = driver::wait_ready(
            &ctx.client,
            &null_subjects,
            &ctx.payloads,
            &tag,
            ready_timeout,
            &mut null_child,
        )
        .await?;
        eprintln!(
            "[{}] null-echo worker ready in {:.2} s",
            mode.name(),
            t.as_secs_f64()
        );
        let mut plain_child = None;
        let plain_has_work = steps
            .iter()
            .any(|s| s.phase != "soak" && s.spec.scenario.plain_loop_can_run());
        if mode == Mode::Core && !null_only && !args.no_plain && plain_has_work {
            let mut p = spawn_plain_worker(
                &url,
                &fx,
                &logs.join(format!("{stamp}-plain-{}.log", mode.name())),
            )?;
            let tag = ctx.tag();
            let t = driver::wait_ready(
                &ctx.client,
                &plain_subjects,
                &ctx.payloads,
                &tag,
                ready_timeout,
                &mut p,
            )
            .await?;
            eprintln!(
                "[{}] plain-loop worker ready in {:.2} s",
                mode.name(),
                t.as_secs_f64()
            );
            plain_child = Some(p);
        }
        let mut worker_child = None;
        if worker_found {
            let ports = (try_free_port()?, try_free_port()?);
            let mut w = spawn_worker(
                mode,
                &url,
                &args,
                gpu_pool,
                &fx,
                ports,
                &logs.join(format!("{stamp}-worker-{}.log", mode.name())),
            )?;
            let tag = ctx.tag();
            let t = driver::wait_ready(
                &ctx.client,
                &worker_subjects,
                &ctx.payloads,
                &tag,
                ready_timeout,
                &mut w,
            )
            .await?;
            let h = http_client::status(ports.1, "/_health");
            let m = http_client::status(ports.0, "/metrics");
            let line = format!(
                "{}: ready in {:.2} s; /_health on :{} -> {}; /metrics on :{} -> {}",
                mode.name(),
                t.as_secs_f64(),
                ports.1,
                h.map_or("no answer".into(), |c| c.to_string()),
                ports.0,
                m.map_or("no answer".into(), |c| c.to_string())
            );
            eprintln!("[{}] worker {line}", mode.name());
            health.push(line);
            worker_child = Some(w);
        }

        for step in &steps {
            let what = format!(
                "{} {} {}",
                mode.name(),
                step.phase,
                step.spec.scenario.name()
            );
            let mut null_runs = Vec::new();
            let mut plain_runs = Vec::new();
            let mut worker_runs = Vec::new();
            for rep in 0..repeats {
                let o = ctx
                    .measure(
                        &null_subjects,
                        &step.spec,
                        args.warmup,
                        &mut null_child,
                        true,
                        format!("{what} null #{}", rep + 1),
                    )
                    .await?;
                eprintln!("[{what}] null   #{}: {}", rep + 1, short(&o));
                null_runs.push(o);
                // No plain row where the plain loop cannot do the block's work (inference).
                let plain_runs_it = step.phase != "soak" && step.spec.scenario.plain_loop_can_run();
                if let (Some(p), true) = (plain_child.as_mut(), plain_runs_it) {
                    let o = ctx
                        .measure(
                            &plain_subjects,
                            &step.spec,
                            args.warmup,
                            p,
                            false,
                            format!("{what} plain #{}", rep + 1),
                        )
                        .await?;
                    eprintln!("[{what}] plain  #{}: {}", rep + 1, short(&o));
                    plain_runs.push(o);
                }
                if let Some(w) = worker_child.as_mut() {
                    let mut spec = step.spec.clone();
                    if let Some(d) = step.worker_duration {
                        spec.duration = Some(d);
                    }
                    let o = ctx
                        .measure(
                            &worker_subjects,
                            &spec,
                            args.warmup,
                            w,
                            false,
                            format!("{what} worker #{}", rep + 1),
                        )
                        .await?;
                    eprintln!("[{what}] worker #{}: {}", rep + 1, short(&o));
                    worker_runs.push(o);
                    if step.phase == "soak" {
                        break; // one soak run is enough
                    }
                }
            }
            let null_rep = stats::aggregate("null", &null_runs);
            let worker_rep =
                (!worker_runs.is_empty()).then(|| stats::aggregate("worker", &worker_runs));
            let ratios = worker_rep
                .as_ref()
                .map(|w| stats::ratios(w, &null_rep))
                .unwrap_or_default();
            let plain_rep =
                (!plain_runs.is_empty()).then(|| stats::aggregate("plain", &plain_runs));
            let plain_ratios = match (&worker_rep, &plain_rep) {
                (Some(w), Some(p)) => stats::ratios(w, p),
                _ => Vec::new(),
            };
            if step.phase == "soak" {
                if let Some(o) = worker_runs.first() {
                    let total = step.worker_duration.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                    let warm = args.soak_warmup.unwrap_or((total * 0.2).min(60.0));
                    soaks.push(SoakReport {
                        mode: mode.name().to_string(),
                        minutes: total / 60.0,
                        rate: step.spec.rate.unwrap_or(0.0),
                        sample_every_s: step
                            .spec
                            .sample_every
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0),
                        rss_flatness: stats::rss_flatness(&o.samples, warm),
                        samples: o.samples.clone(),
                    });
                }
            }
            panels.push(panel(what.clone(), &null_runs, &worker_runs));
            pairs.push(PairReport {
                mode: mode.name().to_string(),
                phase: step.phase.to_string(),
                scenario: step.spec.scenario.name().to_string(),
                window: step.spec.window,
                rate: step.spec.rate,
                duration_s: step.spec.duration.map(|d| d.as_secs_f64()),
                count: step.spec.count,
                null: null_rep,
                worker: worker_rep,
                ratios,
                plain: plain_rep,
                plain_ratios,
            });
        }
        drop(worker_child);
        drop(plain_child);
        drop(null_child);
    }

    println!();
    println!("{}", report::table(&pairs));
    println!(
        "latencies in ms (publish -> ack / result); tasks/s = results / (first publish -> last result); \
         wrk/brk = CPU µs per task of the worker (or null-echo / plain-loop) process / nats-server; ratio = worker ÷ null; ÷plain = worker ÷ plain loop{}",
        if repeats > 1 { format!("; medians of {repeats} runs") } else { String::new() }
    );
    for s in &soaks {
        let f = &s.rss_flatness;
        println!(
            "soak {} {:.1} min @ {:.0}/s: RSS {} (last-third max {} KiB vs first-third max {} KiB after {:.0} s warm-up; flat = ≤ {:.2}x)",
            s.mode,
            s.minutes,
            s.rate,
            f.verdict,
            f.last_third_max_kib.map_or("-".into(), |v| v.to_string()),
            f.first_third_max_kib.map_or("-".into(), |v| v.to_string()),
            f.warmup_s,
            f.limit
        );
    }
    let gate = args.gate.then(|| {
        let mut g = stats::evaluate_gate(&pairs);
        if !worker_found {
            g.pass = false;
            g.notes.push("worker binary not found".to_string());
        }
        g
    });
    if let Some(g) = &gate {
        println!("\n{}", report::gate_text(g));
    }

    let meta = Meta {
        tool: format!("beamline-bench {}", env!("CARGO_PKG_VERSION")),
        started_unix_s: stamp,
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus,
        cpu_model,
        kernel,
        args: std::env::args().collect(),
        nats_url: url.clone(),
        nats_server: nats_version,
        worker_bin: args.worker_bin.display().to_string(),
        worker_found,
        worker_health: health,
        repeats,
        http_upstream_requests: upstream.requests.load(std::sync::atomic::Ordering::Relaxed),
        notes,
    };
    let rep = Report {
        meta,
        measurements: pairs,
        gate: gate.clone(),
        soak: soaks.clone(),
    };
    let json = args.out.join(format!("report-{stamp}.json"));
    report::write_json(&json, &rep)?;
    let svg = args.out.join(format!("latency-{stamp}.svg"));
    report::latency_svg(&svg, &panels)?;
    println!(
        "report: {}\nlatency plot: {}",
        json.display(),
        svg.display()
    );
    for s in &soaks {
        let p = args.out.join(format!("soak-{}-{stamp}.svg", s.mode));
        report::soak_svg(
            &p,
            &format!("soak {} mix @ {:.0}/s", s.mode, s.rate),
            &s.samples,
            s.rss_flatness.warmup_s,
        )?;
        println!("soak plot: {}", p.display());
    }
    drop(broker);
    drop(upstream);
    drop(fx);
    Ok(match gate {
        Some(g) if !g.pass => ExitCode::from(EXIT_GATE_MISSED),
        _ => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec!["beamline-bench"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).expect("parse").run
    }

    #[test]
    fn gate_plan_is_mix_flat_out_then_mix_at_gate_rate() {
        let p = plan(&args(&["--gate", "--duration", "5"]));
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].phase, p[0].spec.scenario, p[0].spec.rate),
            ("throughput", Scenario::Mix, None)
        );
        assert_eq!((p[1].phase, p[1].spec.rate), ("latency", Some(500.0)));
        assert_eq!(p[1].spec.duration, Some(Duration::from_secs(5)));
    }

    #[test]
    fn default_plan_and_lists() {
        assert_eq!(plan(&args(&[])).len(), 5);
        let a = args(&[
            "--scenario",
            "fs-get,sql",
            "--mode",
            "core,jetstream",
            "--count",
            "100",
        ]);
        let p = plan(&a);
        assert_eq!(
            p.iter().map(|s| s.spec.scenario).collect::<Vec<_>>(),
            vec![Scenario::FsGet, Scenario::Sql]
        );
        assert_eq!(p[0].spec.count, Some(100));
        assert_eq!(p[0].spec.duration, None);
        assert_eq!(a.mode, vec![Mode::Core, Mode::Jetstream]);
        let soak = plan(&args(&["--soak", "2", "--rate", "300"]));
        assert_eq!(soak[0].worker_duration, Some(Duration::from_secs(120)));
        assert_eq!(soak[0].spec.rate, Some(300.0));
    }

    #[test]
    fn inference_gets_a_gpu_pool_only_when_nothing_else_sizes_it() {
        let a = args(&["--scenario", "inference"]);
        assert_eq!(plan(&a)[0].spec.scenario, Scenario::Inference);
        assert_eq!(gpu_pool_arg(&a, true, false), Some(1));
        // Other scenarios: the worker's default (no flag).
        assert_eq!(gpu_pool_arg(&args(&[]), false, false), None);
        // The bench's own flag wins, for any scenario.
        assert_eq!(
            gpu_pool_arg(&args(&["--gpu-pool-size", "3"]), false, false),
            Some(3)
        );
        // Sized elsewhere: left to the worker.
        assert_eq!(gpu_pool_arg(&a, true, true), None);
        let wa = args(&["--worker-arg=--gpu-pool-size=2"]);
        assert_eq!(gpu_pool_arg(&wa, true, false), None);
        let dir = tempfile::tempdir().expect("tmp");
        let (with, without) = (dir.path().join("g.toml"), dir.path().join("n.toml"));
        std::fs::write(&with, "[worker]\ngpu_pool_size = 2\n").expect("write");
        std::fs::write(&without, "[worker]\ncpu_pool_size = 2\n").expect("write");
        let pa = |p: &Path| args(&["--profile", p.to_str().expect("utf8")]);
        assert_eq!(gpu_pool_arg(&pa(&with), true, false), None);
        assert_eq!(gpu_pool_arg(&pa(&without), true, false), Some(1));
    }

    #[test]
    fn null_subcommand_parses() {
        let cli =
            Cli::try_parse_from(["beamline-bench", "null", "--duration", "3"]).expect("parse");
        assert!(matches!(cli.cmd, Some(Cmd::Null(ref a)) if a.duration == 3.0));
    }
}
