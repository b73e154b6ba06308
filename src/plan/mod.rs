//! `beamline_worker plan`: the thread placement the worker will use, resolved by the same
//! code the worker runs ([`Config::resolve`]) against the host's topology ([`crate::host`]),
//! shown as a table or JSON with the warnings an operator would regret ignoring. The
//! worker logs the same plan at start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Cli, Config, ConsumerMode};
pub use crate::host::{format_list, parse_list, topology, HostClass, Topology};

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub sysfs_root: PathBuf,
    pub logical_cpus: usize,
    pub physical_cores: usize,
    pub threads_per_core: usize,
    pub allowed_cores: String,
    pub numa_nodes: BTreeMap<usize, String>,
    pub l3_groups: Vec<String>,
    pub gpus: Vec<topology::Gpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadPlace {
    pub thread: String,
    pub pool: &'static str,
    /// `None`: not pinned (the kernel places it on any allowed core).
    pub core: Option<usize>,
    pub numa_node: Option<usize>,
    pub smt_siblings: String,
    pub l3_shared_with: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuSlot {
    pub slot: usize,
    pub thread: String,
    pub core: Option<usize>,
    pub core_numa_node: Option<usize>,
    pub device: usize,
    pub pci: String,
    pub device_numa_node: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    pub lane: String,
    pub thread: String,
    pub core: Option<usize>,
    pub carries: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileInfo {
    pub name: Option<String>,
    pub path: Option<PathBuf>,
    pub hardware: Option<String>,
    pub host: Option<HostClass>,
}

/// The resolved placement.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub host: Host,
    pub profile: Option<ProfileInfo>,
    pub cpu_pool_size: usize,
    pub io_pool_size: usize,
    pub gpu_pool_size: usize,
    pub threads: Vec<ThreadPlace>,
    pub gpu_slots: Vec<GpuSlot>,
    pub lanes: Vec<Lane>,
    /// systemd `CPUAffinity=` for the unit: the pinned cores and their SMT siblings
    /// (where the floating threads run too); the allowed cores when nothing is pinned.
    pub cpu_affinity: String,
    pub warnings: Vec<String>,
}

/// Where a thread of `pool` pinned to `core` runs, with its neighbours.
fn place(topo: &Topology, thread: String, pool: &'static str, core: Option<usize>) -> ThreadPlace {
    let cpu = core.and_then(|c| topo.cpu(c));
    ThreadPlace {
        thread,
        pool,
        core,
        numa_node: cpu.and_then(|c| c.numa_node),
        smt_siblings: cpu.map_or("-".into(), |c| {
            format_list(
                &c.smt_siblings
                    .iter()
                    .copied()
                    .filter(|s| *s != c.id)
                    .collect::<Vec<_>>(),
            )
        }),
        l3_shared_with: cpu.map_or("-".into(), |c| format_list(&c.l3)),
    }
}

/// Thread i of a pool runs on `list[i % len]`; an empty list pins nothing.
fn pick(list: &[usize], i: usize) -> Option<usize> {
    (!list.is_empty()).then(|| list[i % list.len()])
}

/// Every thread the worker starts (CPU, IO, GPU slots, transport), and the GPU slots.
fn threads(cfg: &Config, topo: &Topology) -> (Vec<ThreadPlace>, Vec<GpuSlot>) {
    let mut threads = Vec::new();
    for i in 0..cfg.cpu_pool_size {
        threads.push(place(
            topo,
            format!("cpu-{i}"),
            "cpu",
            pick(&cfg.cpu_cores, i),
        ));
    }
    for i in 0..cfg.io_pool_size {
        threads.push(place(
            topo,
            format!("beamline-io-{i}"),
            "io",
            pick(&cfg.io_cores, i),
        ));
    }
    let mut gpu_slots = Vec::new();
    if cfg.gpu_pool_size > 0 && !topo.gpus.is_empty() {
        for i in 0..cfg.gpu_pool_size {
            let gpu = &topo.gpus[i % topo.gpus.len()];
            let thread = format!("gpu-slot-{i}-dev{}", gpu.ordinal);
            let core = pick(&cfg.gpu_cores, i);
            threads.push(place(topo, thread.clone(), "gpu", core));
            gpu_slots.push(GpuSlot {
                slot: i,
                thread,
                core,
                core_numa_node: core.and_then(|c| topo.cpu(c)).and_then(|c| c.numa_node),
                device: gpu.ordinal,
                pci: gpu.pci.clone(),
                device_numa_node: gpu.numa_node,
            });
        }
    }
    threads.push(place(topo, "transport".into(), "transport", None));
    (threads, gpu_slots)
}

/// One intake lane per CPU thread, and the control connection.
fn lanes(cfg: &Config) -> Vec<Lane> {
    let intake = match cfg.consumer {
        ConsumerMode::Jetstream => format!(
            "JetStream pulls on durable {} (stream {}); ack, result, DLQ publishes; dedupe lookups and stores",
            cfg.js.durable, cfg.js.stream
        ),
        ConsumerMode::Core => format!(
            "queue subscription {} on {}; ack, result, DLQ publishes",
            cfg.queue_group, cfg.subjects.assign
        ),
    };
    let mut lanes: Vec<Lane> = (0..cfg.cpu_pool_size)
        .map(|i| Lane {
            lane: format!("lane-{i}"),
            thread: format!("cpu-{i}"),
            core: pick(&cfg.cpu_cores, i),
            carries: intake.clone(),
        })
        .collect();
    lanes.push(Lane {
        lane: "control".into(),
        thread: "transport".into(),
        core: None,
        carries: "heartbeats, cancels, approvals (requests, decisions, expiries)".into(),
    });
    lanes
}

impl Host {
    fn of(topo: &Topology, allowed: &[usize]) -> Host {
        let threads_per_core = topo
            .cpus
            .iter()
            .map(|c| c.smt_siblings.len())
            .max()
            .unwrap_or(1);
        Host {
            sysfs_root: topo.root.clone(),
            logical_cpus: topo.cpus.len(),
            physical_cores: topo.physical_cores(),
            threads_per_core,
            allowed_cores: format_list(allowed),
            numa_nodes: topo
                .nodes
                .iter()
                .map(|(n, c)| (*n, format_list(c)))
                .collect(),
            l3_groups: topo.l3_groups(),
            gpus: topo.gpus.clone(),
        }
    }
}

/// systemd `CPUAffinity=`: the pinned cores and their allowed SMT siblings when every pool
/// thread is pinned (the transport thread then floats among them); the allowed cores when
/// a pool thread is not pinned: the unit's mask is all such a thread can run on, so a
/// profile pinning only its GPU slots (what `tune` writes) must not confine its CPU and IO
/// threads to the slots' two cores.
fn affinity(threads: &[ThreadPlace], topo: &Topology, allowed: &[usize]) -> Vec<usize> {
    if threads
        .iter()
        .any(|t| t.core.is_none() && t.pool != "transport")
    {
        return allowed.to_vec();
    }
    let mut affinity: Vec<usize> = Vec::new();
    for t in threads {
        if let Some(cpu) = t.core.and_then(|c| topo.cpu(c)) {
            affinity.extend(
                cpu.smt_siblings
                    .iter()
                    .copied()
                    .filter(|s| allowed.contains(s)),
            );
            affinity.push(cpu.id);
        }
    }
    if affinity.is_empty() {
        affinity = allowed.to_vec();
    }
    affinity
}

impl Plan {
    /// The plan of `cfg` (already resolved against `topo`).
    pub fn build(cfg: &Config, topo: &Topology) -> Plan {
        let (threads, gpu_slots) = threads(cfg, topo);
        let allowed = cfg.allowed_cores.clone();
        let profile = (cfg.profile_path.is_some()).then(|| ProfileInfo {
            name: cfg.profile_name.clone(),
            path: cfg.profile_path.clone(),
            hardware: cfg.profile_hardware.clone(),
            host: cfg.profile_host.clone(),
        });
        let mut plan = Plan {
            cpu_affinity: format_list(&affinity(&threads, topo, &allowed)),
            host: Host::of(topo, &allowed),
            profile,
            cpu_pool_size: cfg.cpu_pool_size,
            io_pool_size: cfg.io_pool_size,
            gpu_pool_size: cfg.gpu_pool_size,
            threads,
            gpu_slots,
            lanes: lanes(cfg),
            warnings: Vec::new(),
        };
        plan.warnings = warnings(&plan, cfg, topo, &allowed);
        plan
    }

    /// The plan as an aligned text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        self.write_host(&mut s);
        self.write_pools(&mut s);
        self.write_threads(&mut s);
        self.write_lanes(&mut s);
        s
    }

    /// The host: CPUs, NUMA nodes, L3 groups, GPUs.
    fn write_host(&self, s: &mut String) {
        use std::fmt::Write;
        let h = &self.host;
        let _ = writeln!(
            s,
            "host ({}): {} logical CPUs on {} cores ({} thread(s) per core); allowed: {}",
            h.sysfs_root.display(),
            h.logical_cpus,
            h.physical_cores,
            h.threads_per_core,
            h.allowed_cores
        );
        for (n, cpus) in &h.numa_nodes {
            let _ = writeln!(s, "  NUMA node {n}: CPUs {cpus}");
        }
        let _ = writeln!(s, "  L3 groups: {}", h.l3_groups.join(" | "));
        if h.gpus.is_empty() {
            let _ = writeln!(
                s,
                "  GPUs: none (no NVIDIA display/3D controller on the PCI bus)"
            );
        }
        for g in &h.gpus {
            let _ = writeln!(
                s,
                "  GPU {}: {} (device {}), NUMA node {}",
                g.ordinal,
                g.pci,
                g.device_id,
                opt(g.numa_node)
            );
        }
    }

    /// The profile and the pool sizes.
    fn write_pools(&self, s: &mut String) {
        use std::fmt::Write;
        match &self.profile {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "profile: {} ({}){}",
                    p.name.as_deref().unwrap_or("unnamed"),
                    p.path
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                    p.hardware
                        .as_deref()
                        .map_or(String::new(), |h| format!(", written for: {h}"))
                );
            }
            None => {
                let _ = writeln!(s, "profile: none (computed defaults)");
            }
        }
        let _ = writeln!(
            s,
            "pools: cpu {}, io {}, gpu {}\n",
            self.cpu_pool_size, self.io_pool_size, self.gpu_pool_size
        );
    }

    /// One line per thread, then one per GPU slot.
    fn write_threads(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "{:<20} {:<10} {:>5} {:>5}  {:<14} L3 SHARED WITH",
            "THREAD", "POOL", "CORE", "NODE", "SMT SIBLINGS"
        );
        for t in &self.threads {
            let _ = writeln!(
                s,
                "{:<20} {:<10} {:>5} {:>5}  {:<14} {}",
                t.thread,
                t.pool,
                t.core.map_or("any".into(), |c| c.to_string()),
                opt(t.numa_node),
                t.smt_siblings,
                t.l3_shared_with
            );
        }
        if !self.gpu_slots.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<5} {:<20} {:>5} {:>9}  {:>6} {:<14} {:>8}",
                "SLOT", "THREAD", "CORE", "CORE NODE", "DEVICE", "PCI", "DEV NODE"
            );
            for g in &self.gpu_slots {
                let _ = writeln!(
                    s,
                    "{:<5} {:<20} {:>5} {:>9}  {:>6} {:<14} {:>8}",
                    g.slot,
                    g.thread,
                    g.core.map_or("any".into(), |c| c.to_string()),
                    opt(g.core_numa_node),
                    g.device,
                    g.pci,
                    opt(g.device_numa_node)
                );
            }
        }
    }

    /// The NATS lanes, the systemd affinity and the warnings.
    fn write_lanes(&self, s: &mut String) {
        use std::fmt::Write;
        let intake = self.lanes.first().map_or("", |l| l.carries.as_str());
        let _ = writeln!(
            s,
            "\nNATS LANES (one connection each; a CPU lane carries: {intake})"
        );
        for l in &self.lanes {
            let carries = if l.lane == "control" {
                l.carries.as_str()
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:<9} {:<10} core {:>4}  {}",
                l.lane,
                l.thread,
                l.core.map_or("any".into(), |c| c.to_string()),
                carries
            );
        }
        let _ = writeln!(s, "\nsystemd: CPUAffinity={}", self.cpu_affinity);
        if self.warnings.is_empty() {
            let _ = writeln!(s, "\nwarnings: none");
        } else {
            let _ = writeln!(s, "\nwarnings:");
            for w in &self.warnings {
                let _ = writeln!(s, "  - {w}");
            }
        }
    }
}

fn opt(v: Option<usize>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// What an operator would regret ignoring, in the order the table shows them.
fn warnings(plan: &Plan, cfg: &Config, topo: &Topology, allowed: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    shared_cores(plan, allowed, &mut out);
    io_on_cpu_siblings(plan, topo, &mut out);
    gpu_placement(plan, cfg, topo, &mut out);
    too_many_pinned(plan, cfg, allowed, &mut out);
    other_hardware(cfg, topo, &mut out);
    out
}

/// Two pools on one core while others idle.
fn shared_cores(plan: &Plan, allowed: &[usize], out: &mut Vec<String>) {
    let mut pools_on: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for t in &plan.threads {
        if let Some(c) = t.core {
            pools_on.entry(c).or_default().insert(t.pool);
        }
    }
    let idle: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !pools_on.contains_key(c))
        .collect();
    let shared: Vec<String> = pools_on
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(c, p)| {
            format!(
                "core {c} ({})",
                p.iter().copied().collect::<Vec<_>>().join("+")
            )
        })
        .collect();
    if !shared.is_empty() && !idle.is_empty() {
        out.push(format!(
            "two pools share {} while cores {} are idle",
            shared.join(", "),
            format_list(&idle)
        ));
    }
}

/// An IO thread on the SMT sibling of a CPU-pool core.
fn io_on_cpu_siblings(plan: &Plan, topo: &Topology, out: &mut Vec<String>) {
    let cpu_cores: BTreeSet<usize> = plan
        .threads
        .iter()
        .filter(|t| t.pool == "cpu")
        .filter_map(|t| t.core)
        .collect();
    for t in plan.threads.iter().filter(|t| t.pool == "io") {
        let Some(cpu) = t.core.and_then(|c| topo.cpu(c)) else {
            continue;
        };
        let sib: Vec<usize> = cpu
            .smt_siblings
            .iter()
            .copied()
            .filter(|s| *s != cpu.id && cpu_cores.contains(s))
            .collect();
        if !sib.is_empty() {
            out.push(format!(
                "IO thread {} on core {} is the SMT sibling of CPU-pool core(s) {}",
                t.thread,
                cpu.id,
                format_list(&sib)
            ));
        }
    }
}

/// GPU slot threads off their device's NUMA node; a GPU pool without a GPU.
fn gpu_placement(plan: &Plan, cfg: &Config, topo: &Topology, out: &mut Vec<String>) {
    for g in &plan.gpu_slots {
        if let (Some(a), Some(b)) = (g.core_numa_node, g.device_numa_node) {
            if a != b {
                out.push(format!(
                    "GPU slot thread {} runs on core {} (NUMA node {a}) but its device {} is on NUMA node {b}",
                    g.thread,
                    g.core.unwrap_or_default(),
                    g.pci
                ));
            }
        }
    }
    if cfg.gpu_pool_size > 0 && topo.gpus.is_empty() {
        out.push(format!(
            "--gpu-pool-size {} but no NVIDIA GPU on the PCI bus: ai.inference will run on the CPU fallback",
            cfg.gpu_pool_size
        ));
    }
}

/// More pinned threads than cores.
fn too_many_pinned(plan: &Plan, cfg: &Config, allowed: &[usize], out: &mut Vec<String>) {
    let pinned = plan.threads.iter().filter(|t| t.core.is_some()).count();
    if pinned > allowed.len() {
        out.push(format!(
            "{} pinned threads (cpu {}, io {}, gpu {}) for {} cores",
            pinned,
            cfg.cpu_pool_size,
            cfg.io_pool_size,
            plan.gpu_slots.len(),
            allowed.len()
        ));
    }
}

/// A profile written for another host class.
fn other_hardware(cfg: &Config, topo: &Topology, out: &mut Vec<String>) {
    if let Some(h) = &cfg.profile_host {
        let mut diff = Vec::new();
        let mut check = |what: &str, want: Option<usize>, have: usize| {
            if let Some(w) = want {
                if w != have {
                    diff.push(format!("{w} {what} (this host: {have})"));
                }
            }
        };
        check("logical CPUs", h.logical_cpus, topo.cpus.len());
        check("NUMA nodes", h.numa_nodes, topo.nodes.len().max(1));
        check("GPUs", h.gpus, topo.gpus.len());
        if !diff.is_empty() {
            out.push(format!(
                "profile {} was written for other hardware: {}",
                cfg.profile_name.as_deref().unwrap_or("(unnamed)"),
                diff.join(", ")
            ));
        }
    }
}

/// `beamline_worker plan`: the worker's flags plus `--json`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "beamline_worker plan",
    about = "Print the resolved thread placement (starts nothing, connects to nothing)"
)]
pub struct PlanCli {
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print the unit drop-in that pins the process (`CPUAffinity=`) instead.
    #[arg(long, conflicts_with = "json")]
    pub systemd_dropin: bool,
    #[command(flatten)]
    pub worker: Cli,
}

/// Resolves `cli` as the worker would and builds its plan.
pub fn plan_for(cli: Cli) -> Result<Plan, String> {
    let cfg = Config::resolve(cli).map_err(|e| e.to_string())?;
    let topo = Topology::read(&cfg.sysfs_root)?;
    Ok(Plan::build(&cfg, &topo))
}

/// Runs the subcommand on `args` (the words after `plan`); the exit code: 0, or 2 when
/// the configuration is refused.
pub fn main<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> std::process::ExitCode {
    use clap::Parser;
    let args = std::iter::once(std::ffi::OsString::from("beamline_worker plan")).chain(args);
    let cli = match PlanCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help / --version are not errors.
            return if e.use_stderr() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    match plan_for(cli.worker) {
        Ok(plan) => {
            // Written, not println!: a closed pipe (`plan | head`) is not a panic.
            use std::io::Write as _;
            let text = if cli.systemd_dropin {
                format!(
                    "# /etc/systemd/system/beamline-worker.service.d/affinity.conf\n\
                     # from: beamline_worker plan --systemd-dropin (profile {})\n[Service]\nCPUAffinity={}\n",
                    plan.profile
                        .as_ref()
                        .and_then(|p| p.name.as_deref())
                        .unwrap_or("none"),
                    plan.cpu_affinity.replace(',', " ")
                )
            } else if cli.json {
                match serde_json::to_string_pretty(&plan) {
                    Ok(j) => j + "\n",
                    Err(e) => {
                        eprintln!("beamline_worker plan: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            } else {
                plan.table()
            };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("beamline_worker plan: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs the plan of the starting worker (one line with the JSON, then one per warning).
pub fn log_at_start(cfg: &Config) {
    match Topology::read(&cfg.sysfs_root) {
        Ok(topo) => {
            let plan = Plan::build(cfg, &topo);
            let json = serde_json::to_string(&plan).unwrap_or_default();
            tracing::info!(plan = %json, "placement plan");
            for w in &plan.warnings {
                tracing::warn!(warning = %w, "placement");
            }
        }
        Err(e) => tracing::warn!(error = %e, "no topology: placement plan not shown"),
    }
}
