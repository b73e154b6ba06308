//! `beamline-bench tune`: chooses the worker's pool sizes and core placement on this host
//! by measuring them. Candidates come from the host's topology as `beamline_worker plan
//! --json` reports it; each is measured by this same binary's ordinary bench run (null
//! echo and worker interleaved, at the worker's defaults apart from the pools), repeated
//! in rounds until the time budget is spent; the score of a candidate is the median over
//! its runs of the geometric mean, over the scenarios, of worker tasks/s ÷ null-echo
//! tasks/s of the same run (the ratio cancels part of the host's noise). The best is
//! written as a profile under `tuning/` with the figures, the command and the commit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub(crate) struct TuneArgs {
    /// Wall-clock budget for all measurements.
    #[arg(long, default_value_t = 8.0)]
    budget_minutes: f64,
    /// The worker binary (also asked for the host's plan).
    #[arg(long, default_value = "target/release/beamline_worker")]
    worker_bin: PathBuf,
    /// Consumer mode measured: core or jetstream.
    #[arg(long, default_value = "core")]
    mode: String,
    /// Scenarios measured, comma-separated (bench names).
    #[arg(long, default_value = "mix,fs-get")]
    scenario: String,
    /// Seconds of load per scenario per run.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Plan against a captured tree instead of /sys (the measurement still runs here).
    #[arg(long)]
    sysfs_root: Option<PathBuf>,
    /// Where the chosen profile is written (default tuning/tuned-<N>cpu.toml).
    #[arg(long)]
    profile_out: Option<PathBuf>,
    /// GPU slots of every measured worker and of the profile written (`gpu_pool_size`).
    /// Default: none on a host without GPUs, else one per GPU and at least two (the
    /// shipped host-class profiles' choice), so that a profile tuned on a GPU host keeps
    /// `ai.inference` on its GPUs (the worker's own default, 0, has no GPU pool).
    #[arg(long)]
    gpu_pool_size: Option<usize>,
    /// Bench reports of every run, and tune-summary.json.
    #[arg(long, default_value = "bench/out/tune")]
    out: PathBuf,
}

/// The GPU slots tune gives the worker on a host with `gpus` GPUs when not told
/// ([`TuneArgs::gpu_pool_size`]).
fn default_gpu_slots(gpus: usize) -> usize {
    if gpus == 0 {
        0
    } else {
        gpus.max(2)
    }
}

#[derive(Debug, Clone, Serialize)]
struct Candidate {
    name: String,
    cpu: usize,
    io: usize,
    /// GPU slots (`gpu_pool_size`); the same for every candidate of a run.
    gpu: usize,
    /// TOML values of `cpu_cores` / `io_cores`; `None`: no profile at all (the defaults).
    cpu_cores: Option<String>,
    io_cores: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Runs {
    /// Per run: the geometric-mean ratio.
    scores: Vec<f64>,
    /// Per run and scenario: (scenario, worker tasks/s, ratio to null echo).
    figures: Vec<Vec<(String, f64, f64)>>,
    reports: Vec<PathBuf>,
    failures: Vec<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn list(cores: &[usize]) -> String {
    format!(
        "[{}]",
        cores
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Candidates for `allowed` cores: the computed defaults first; then half and three
/// eighths as many CPU threads as cores, left to the kernel (each CPU thread has its own
/// NATS lane, and one woken for few messages pays a wake-up per task: on the 16-core
/// device host 6 and 8 unpinned CPU threads beat 16 flat out,
/// bench/results/device-h200-2026-11-28-second/); then pool sizes around the defaults
/// with the IO rings packed after the CPU threads, on cores of their own, or left to the
/// kernel.
fn candidates(allowed: &[usize], gpu: usize) -> Vec<Candidate> {
    let n = allowed.len().max(1);
    let mut out = vec![Candidate {
        name: "computed defaults".into(),
        cpu: n,
        io: n.div_ceil(2),
        gpu,
        cpu_cores: None,
        io_cores: None,
    }];
    let few_io = (n / 8).max(1);
    for cpu in [n / 2, 3 * n / 8] {
        let cpu = cpu.max(1);
        if cpu < n {
            out.push(Candidate {
                name: format!("cpu {cpu}, io {few_io}, unpinned"),
                cpu,
                io: few_io,
                gpu,
                cpu_cores: Some("\"none\"".into()),
                io_cores: Some("\"none\"".into()),
            });
        }
    }
    let mut ios = vec![1, (n / 8).max(1), n.div_ceil(4)];
    ios.sort_unstable();
    ios.dedup();
    for &io in &ios {
        let last = &allowed[n.saturating_sub(io)..];
        // All cores for CPU threads, the rings on the last cores (shared).
        out.push(Candidate {
            name: format!("cpu {n} all, io {io} on last"),
            cpu: n,
            io,
            gpu,
            cpu_cores: Some("\"auto\"".into()),
            io_cores: Some(list(last)),
        });
        if n > io {
            // Rings on cores of their own.
            out.push(Candidate {
                name: format!("cpu {} first, io {io} own cores", n - io),
                cpu: n - io,
                io,
                gpu,
                cpu_cores: Some(list(&allowed[..n - io])),
                io_cores: Some(list(last)),
            });
        }
        // Kernel placement.
        out.push(Candidate {
            name: format!("cpu {n}, io {io}, unpinned"),
            cpu: n,
            io,
            gpu,
            cpu_cores: Some("\"none\"".into()),
            io_cores: Some("\"none\"".into()),
        });
    }
    out.push(Candidate {
        name: format!("cpu {n}, io {n} auto"),
        cpu: n,
        io: n,
        gpu,
        cpu_cores: Some("\"auto\"".into()),
        io_cores: Some("\"auto\"".into()),
    });
    let mut seen = Vec::new();
    out.retain(|c| {
        let key = (c.cpu, c.io, c.cpu_cores.clone(), c.io_cores.clone());
        let fresh = !seen.contains(&key);
        seen.push(key);
        fresh
    });
    out
}

fn profile_text(c: &Candidate, name: &str, hardware: &str, host: &serde_json::Value) -> String {
    let mut s = format!("name = \"{name}\"\nhardware = \"{hardware}\"\n\n[host]\n");
    s += &format!(
        "logical_cpus = {}\nnuma_nodes = {}\ngpus = {}\n\n[pools]\n",
        host["logical_cpus"],
        host["numa_nodes"].as_object().map_or(1, |m| m.len().max(1)),
        host["gpus"].as_array().map_or(0, Vec::len)
    );
    s += &format!(
        "cpu_cores = {}\nio_cores = {}\n\n[worker]\ncpu_pool_size = {}\nio_pool_size = {}\n",
        c.cpu_cores.as_deref().unwrap_or("\"auto\""),
        c.io_cores.as_deref().unwrap_or("\"auto\""),
        c.cpu,
        c.io
    );
    if c.gpu > 0 {
        s += &format!("gpu_pool_size = {}\n", c.gpu);
    }
    s
}

fn plan_json(args: &TuneArgs) -> Result<serde_json::Value> {
    let mut cmd = Command::new(&args.worker_bin);
    cmd.args(["plan", "--json"]);
    if let Some(r) = &args.sysfs_root {
        cmd.arg("--sysfs-root").arg(r);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} plan", args.worker_bin.display()))?;
    if !out.status.success() {
        bail!("plan failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One bench run of `c`; returns the report path.
fn measure(args: &TuneArgs, c: &Candidate, profile: Option<&Path>, out: &Path) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(me);
    cmd.arg("--worker-bin")
        .arg(&args.worker_bin)
        .args(["--mode", &args.mode, "--scenario", &args.scenario])
        .args(["--duration", &args.duration.to_string(), "--warmup", "1"])
        .args(["--cpu-pool-size", &c.cpu.to_string()])
        .args(["--io-pool-size", &c.io.to_string()])
        .args(["--gpu-pool-size", &c.gpu.to_string()])
        .arg("--out")
        .arg(out);
    if let Some(p) = profile {
        cmd.arg("--profile").arg(p);
    }
    let log = std::fs::File::create(out.with_extension("log"))?;
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running the bench")?;
    if !status.success() {
        bail!(
            "bench exited with {status} (see {})",
            out.with_extension("log").display()
        );
    }
    let report = std::fs::read_dir(out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("report-"))
        })
        .ok_or_else(|| anyhow!("no report in {}", out.display()))?;
    Ok(report)
}

/// (scenario, worker tasks/s, worker ÷ null) of each measurement in a report.
fn figures(report: &Path) -> Result<Vec<(String, f64, f64)>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(report)?)?;
    let mut out = Vec::new();
    for m in v["measurements"].as_array().into_iter().flatten() {
        let w = m["worker"]["tasks_per_s"].as_f64();
        let n = m["null"]["tasks_per_s"].as_f64();
        if let (Some(w), Some(n)) = (w, n) {
            if n > 0.0 && m["worker"]["lost"].as_u64() == Some(0) {
                out.push((m["scenario"].as_str().unwrap_or("?").to_owned(), w, w / n));
            }
        }
    }
    if out.is_empty() {
        bail!("{}: no complete worker measurement", report.display());
    }
    Ok(out)
}

pub(crate) fn tune_main(args: &TuneArgs) -> Result<()> {
    let plan = plan_json(args)?;
    let host = plan["host"].clone();
    let allowed = host["allowed_cores"]
        .as_str()
        .map(parse_list)
        .unwrap_or_default();
    if allowed.is_empty() {
        bail!("the plan names no usable core");
    }
    let n = allowed.len();
    let gpus = host["gpus"].as_array().map_or(0, Vec::len);
    let gpu = args
        .gpu_pool_size
        .unwrap_or_else(|| default_gpu_slots(gpus));
    let cands = candidates(&allowed, gpu);
    std::fs::create_dir_all(&args.out)?;
    let budget = Duration::from_secs_f64(args.budget_minutes * 60.0);
    let start = Instant::now();
    let scenarios = args.scenario.split(',').count() as f64;
    // Null and worker per scenario, each warm-up + duration, plus start-up: a first guess
    // replaced by what the first run took.
    let mut per_run = Duration::from_secs_f64(scenarios * 2.0 * (args.duration + 1.0) + 6.0);
    let est_total = (budget.as_secs_f64() / per_run.as_secs_f64())
        .floor()
        .max(1.0) as u64;
    let bar = ProgressBar::new(est_total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut runs: Vec<Runs> = vec![Runs::default(); cands.len()];
    let mut round = 0;
    let mut best_msg = String::from("best: -");
    'rounds: loop {
        round += 1;
        for (k, c) in cands.iter().enumerate() {
            if start.elapsed() + per_run > budget {
                break 'rounds;
            }
            bar.set_message(format!(
                "round {round}, candidate {}/{}: {} | {best_msg}",
                k + 1,
                cands.len(),
                c.name
            ));
            let dir = args.out.join(format!("c{k}-r{round}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let profile = match c.cpu_cores {
                Some(_) => {
                    let p = dir.join("candidate.toml");
                    std::fs::write(
                        &p,
                        profile_text(c, &format!("candidate-{k}"), "tune candidate", &host),
                    )?;
                    Some(p)
                }
                None => None,
            };
            let t0 = Instant::now();
            match measure(args, c, profile.as_deref(), &dir).and_then(|r| Ok((figures(&r)?, r))) {
                Ok((f, report)) => {
                    let ratios: Vec<f64> = f.iter().map(|x| x.2).collect();
                    let geo =
                        (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
                    runs[k].scores.push(geo);
                    runs[k].figures.push(f);
                    runs[k].reports.push(report);
                }
                Err(e) => runs[k].failures.push(e.to_string()),
            }
            let took = t0.elapsed();
            per_run = per_run.max(took);
            bar.inc(1);
            if let Some((b, s)) = best(&cands, &runs) {
                best_msg = format!("best: {} ({s:.3}x null)", cands[b].name);
            }
        }
    }
    bar.finish_with_message(best_msg.clone());
    let Some((b, score)) = best(&cands, &runs) else {
        bail!("no candidate completed a run within the budget");
    };
    let defaults = median(&runs[0].scores);
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut head = String::new();
    head += &format!(
        "# Chosen by `beamline-bench tune` (measured, {}).\n# command: {command}\n# commit: {commit}\n",
        chrono_free_date()
    );
    head += &format!(
        "# host: {} logical CPUs on {} cores ({} per core), NUMA {}, L3 groups {}, GPUs {}, allowed {}\n",
        host["logical_cpus"],
        host["physical_cores"],
        host["threads_per_core"],
        host["numa_nodes"],
        host["l3_groups"],
        host["gpus"].as_array().map_or(0, Vec::len),
        host["allowed_cores"]
    );
    head += &format!(
        "# measured: --mode {} --scenario {} --duration {} s per run, {round} round(s) in {:.1} min;\n\
         # score = median over runs of the geometric mean over scenarios of worker/null-echo tasks/s.\n\
         # Noisy host: other processes share these cores; differences of a few % are noise.\n",
        args.mode,
        args.scenario,
        args.duration,
        start.elapsed().as_secs_f64() / 60.0
    );
    head += "# candidate                          runs  score   per scenario: worker tasks/s (ratio), medians\n";
    for (k, c) in cands.iter().enumerate() {
        let r = &runs[k];
        let mut per: Vec<String> = Vec::new();
        if let Some(first) = r.figures.first() {
            for (i, (scen, _, _)) in first.iter().enumerate() {
                let w: Vec<f64> = r
                    .figures
                    .iter()
                    .filter_map(|f| f.get(i).map(|x| x.1))
                    .collect();
                let q: Vec<f64> = r
                    .figures
                    .iter()
                    .filter_map(|f| f.get(i).map(|x| x.2))
                    .collect();
                per.push(format!(
                    "{scen} {:.0}/s ({:.3}x)",
                    median(&w).unwrap_or(0.0),
                    median(&q).unwrap_or(0.0)
                ));
            }
        }
        head += &format!(
            "# {}{:<34} {:>4}  {:<7} {}{}\n",
            if k == b { "*" } else { " " },
            c.name,
            r.scores.len(),
            median(&r.scores).map_or("-".into(), |s| format!("{s:.3}")),
            per.join(", "),
            if r.failures.is_empty() {
                String::new()
            } else {
                format!("  [{} failed]", r.failures.len())
            }
        );
    }
    let verdict = match defaults {
        Some(d) if b == 0 => format!(
            "# verdict: the computed defaults scored best ({d:.3}); this profile is them.\n"
        ),
        Some(d) => format!(
            "# verdict: {:+.1} % over the computed defaults ({score:.3} vs {d:.3}){}\n",
            (score / d - 1.0) * 100.0,
            if (score / d - 1.0).abs() < 0.05 {
                " -- within the noise of this host: not a clear win"
            } else {
                ""
            }
        ),
        None => "# verdict: the computed defaults did not complete a run; no comparison.\n".into(),
    };
    head += &verdict;
    let out_path = args
        .profile_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("tuning/tuned-{n}cpu.toml")));
    let name = out_path
        .file_stem()
        .map_or("tuned".into(), |s| s.to_string_lossy().into_owned());
    let hardware = format!(
        "{} logical CPUs ({} allowed), {} NUMA node(s), {} GPU(s) -- measured by beamline-bench tune",
        host["logical_cpus"],
        n,
        host["numa_nodes"].as_object().map_or(1, |m| m.len()),
        host["gpus"].as_array().map_or(0, Vec::len)
    );
    let text = format!(
        "{head}\n{}",
        profile_text(&cands[b], &name, &hardware, &host)
    );
    std::fs::write(&out_path, &text).with_context(|| format!("write {}", out_path.display()))?;
    let summary = serde_json::json!({
        "command": command, "commit": commit, "host": host, "rounds": round,
        "elapsed_s": start.elapsed().as_secs_f64(),
        "candidates": cands.iter().zip(&runs).map(|(c, r)| serde_json::json!({"candidate": c, "runs": r, "median_score": median(&r.scores)})).collect::<Vec<_>>(),
        "best": cands[b].name, "profile": out_path,
    });
    std::fs::write(
        args.out.join("tune-summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{text}");
    println!(
        "profile: {}\nsummary: {}",
        out_path.display(),
        args.out.join("tune-summary.json").display()
    );
    Ok(())
}

fn best(cands: &[Candidate], runs: &[Runs]) -> Option<(usize, f64)> {
    (0..cands.len())
        .filter_map(|k| median(&runs[k].scores).map(|s| (k, s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn chrono_free_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn parse_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "-")
    {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_the_defaults_and_are_distinct() {
        let c = candidates(&[0, 1], 0);
        assert_eq!(c[0].name, "computed defaults");
        assert_eq!((c[0].cpu, c[0].io), (2, 1));
        assert!(c.len() >= 4, "{c:?}");
        assert!(c
            .iter()
            .any(|x| x.cpu == 1 && x.io_cores.as_deref() == Some("[1]")));
        // Fewer CPU threads than cores, unpinned, right after the defaults: one on two
        // cores; eight and six with two IO threads on sixteen (the device sweep's best).
        assert_eq!((c[1].cpu, c[1].io), (1, 1));
        assert_eq!(c[1].cpu_cores.as_deref(), Some("\"none\""));
        let allowed: Vec<usize> = (0..16).collect();
        let c16 = candidates(&allowed, 2);
        let shapes: Vec<_> = c16[1..3].iter().map(|x| (x.cpu, x.io)).collect();
        assert_eq!(shapes, vec![(8, 2), (6, 2)]);
        assert!(c16[1..3]
            .iter()
            .all(|x| x.io_cores.as_deref() == Some("\"none\"")));
        assert_eq!(c16.len(), 13, "{c16:?}");
        assert_eq!(parse_list("0-2,5"), vec![0, 1, 2, 5]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    }

    /// A profile tuned on a GPU host keeps a GPU pool (the device run of 2026-11-28 wrote
    /// one without, so `ai.inference` would have had no GPU with it); one without GPUs
    /// names none.
    #[test]
    fn a_gpu_hosts_profile_keeps_its_gpu_slots() {
        assert_eq!(default_gpu_slots(0), 0);
        assert_eq!(default_gpu_slots(1), 2);
        assert_eq!(default_gpu_slots(8), 8);
        let host =
            serde_json::json!({"logical_cpus": 16, "numa_nodes": {"0": "0-15"}, "gpus": [{}]});
        let allowed: Vec<usize> = (0..16).collect();
        for c in candidates(&allowed, 2) {
            assert_eq!(c.gpu, 2, "{c:?}");
            let text = profile_text(&c, "t", "h", &host);
            assert!(text.contains("\ngpu_pool_size = 2\n"), "{text}");
            let p: toml::Value = toml::from_str(&text).expect("a profile is TOML");
            assert_eq!(p["worker"]["gpu_pool_size"].as_integer(), Some(2));
        }
        let text = profile_text(&candidates(&allowed, 0)[1], "t", "h", &host);
        assert!(!text.contains("gpu_pool_size"), "{text}");
    }
}
