//! `beamline-gpu-check`: the device check of `gpu/README.md`.
//!
//! 1. Agreement: random networks covering every activation, batches 1..256, run on each
//!    CUDA device and on the scheduler's CPU path, compared with the single-threaded CPU
//!    reference (`|gpu − cpu| ≤ 1e-4 + 1e-4·|cpu|` per value).
//! 2. Direct bench: one request of B rows at a time, B = 1, 2, 4 … 256, GPU and CPU.
//! 3. Dynamic batching bench: C closed-loop clients sending one-row requests, with
//!    batching (max 256 rows, 200 µs window) and without (max 1 row), GPU and CPU.
//!
//! Writes JSON (`--out`) and a Markdown table (`--markdown`). Exit status: 0 when every
//! agreement check passed (and, with `--require-gpu`, a GPU was used), else 1.
//! No GPU is not a failure without `--require-gpu`: the GPU rows are skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_gpu::{
    Activation as A, DevicePref, Layer, Model, Request, Scheduler, SchedulerConfig,
};
use serde_json::{json, Value};

struct Args {
    out: Option<String>,
    markdown: Option<String>,
    quick: bool,
    require_gpu: bool,
    gpu_slots: usize,
    cpu_threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: None,
        markdown: None,
        quick: false,
        require_gpu: false,
        gpu_slots: 2,
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--out" => a.out = Some(val("--out")?),
            "--markdown" => a.markdown = Some(val("--markdown")?),
            "--quick" => a.quick = true,
            "--require-gpu" => a.require_gpu = true,
            "--gpu-slots" => {
                a.gpu_slots = val("--gpu-slots")?
                    .parse()
                    .map_err(|e| format!("--gpu-slots: {e}"))?
            }
            "--cpu-threads" => {
                a.cpu_threads = val("--cpu-threads")?
                    .parse()
                    .map_err(|e| format!("--cpu-threads: {e}"))?
            }
            "-h" | "--help" => {
                println!("beamline-gpu-check [--out FILE.json] [--markdown FILE.md] [--quick] [--require-gpu] [--gpu-slots N] [--cpu-threads N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

fn network(rng: &mut Rng, dims: &[usize], acts: &[A]) -> Model {
    let layers = dims
        .windows(2)
        .zip(acts)
        .map(|(d, &act)| {
            let scale = (3.0 / d[0] as f32).sqrt();
            Layer::new(
                d[0],
                d[1],
                rng.vec(d[0] * d[1], scale),
                rng.vec(d[1], 0.1),
                act,
            )
            .expect("consistent sizes")
        })
        .collect();
    Model::new(layers).expect("consistent layers")
}

fn scheduler(args: &Args, gpu: bool, max_batch: usize, delay: Duration) -> Scheduler {
    Scheduler::start(SchedulerConfig {
        gpu_slots: if gpu { args.gpu_slots } else { 0 },
        cpu_slots: args.cpu_threads.clamp(1, 4),
        cpu_threads: args.cpu_threads,
        max_batch_size: max_batch,
        max_queue_delay: delay,
        device_memory_budget: 8 << 30,
        host_cache_budget: 8 << 30,
    })
    .expect("scheduler starts")
}

fn run(
    s: &Scheduler,
    model: &Arc<Model>,
    inputs: &Arc<[f32]>,
    rows: usize,
    device: DevicePref,
) -> Result<beamline_gpu::Inference, String> {
    let req = Request {
        model: model.clone(),
        inputs: inputs.clone(),
        rows,
        device,
        priority: 0,
        deadline: None,
    };
    let t = s.submit(req).map_err(|e| e.to_string())?;
    futures::executor::block_on(t).map_err(|e| e.to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn agreement(args: &Args, s: &Scheduler, gpu: bool, rng: &mut Rng) -> (Vec<Value>, bool) {
    let cases: Vec<(&str, Vec<usize>, Vec<A>)> = vec![
        (
            "mlp-relu-gelu-softmax",
            vec![64, 128, 128, 10],
            vec![A::Relu, A::Gelu, A::Softmax],
        ),
        ("odd-tanh-linear", vec![33, 257, 7], vec![A::Tanh, A::None]),
        (
            "bench-512-1024-1024-16",
            vec![512, 1024, 1024, 16],
            vec![A::Gelu, A::Relu, A::Softmax],
        ),
    ];
    let batches: &[usize] = if args.quick {
        &[1, 3, 64]
    } else {
        &[1, 3, 64, 256]
    };
    let mut rows_out = Vec::new();
    let mut all_ok = true;
    for (name, dims, acts) in cases {
        let model = Arc::new(network(rng, &dims, &acts));
        for &b in batches {
            let inputs: Arc<[f32]> = rng.vec(b * dims[0], 1.0).into();
            let reference = model.forward_cpu(&inputs, b).expect("reference");
            let mut devices = vec![DevicePref::Cpu];
            if gpu {
                devices.push(DevicePref::Cuda);
            }
            for pref in devices {
                let (device, max_abs, max_rel, ok) = match run(s, &model, &inputs, b, pref) {
                    Ok(inf) => {
                        let mut max_abs = 0f64;
                        let mut max_rel = 0f64;
                        let mut ok = true;
                        for (g, c) in inf.outputs.iter().zip(&reference) {
                            let d = (*g as f64 - *c as f64).abs();
                            max_abs = max_abs.max(d);
                            max_rel = max_rel.max(d / (1.0 + (*c as f64).abs()));
                            ok &= d <= 1e-4 + 1e-4 * (*c as f64).abs();
                        }
                        (inf.device.to_string(), max_abs, max_rel, ok)
                    }
                    Err(e) => {
                        eprintln!("{name} batch {b} {pref:?}: {e}");
                        (format!("{pref:?}: {e}"), f64::NAN, f64::NAN, false)
                    }
                };
                all_ok &= ok;
                rows_out.push(json!({"model": name, "batch": b, "device": device,
                    "max_abs_err": max_abs, "max_rel_err": max_rel, "ok": ok}));
            }
        }
    }
    (rows_out, all_ok)
}

fn bench_direct(args: &Args, gpu: bool, rng: &mut Rng) -> Vec<Value> {
    let s = scheduler(args, gpu, 256, Duration::ZERO);
    let model = Arc::new(network(
        rng,
        &[512, 1024, 1024, 16],
        &[A::Gelu, A::Relu, A::Softmax],
    ));
    let per_point = if args.quick {
        Duration::from_millis(60)
    } else {
        Duration::from_millis(250)
    };
    let mut out = Vec::new();
    let mut devices = vec![DevicePref::Cpu];
    if gpu {
        devices.insert(0, DevicePref::Cuda);
    }
    for pref in devices {
        for b in [1usize, 2, 4, 8, 16, 32, 64, 128, 256] {
            let inputs: Arc<[f32]> = rng.vec(b * 512, 1.0).into();
            for _ in 0..2 {
                let _ = run(&s, &model, &inputs, b, pref);
            }
            let mut lat = Vec::new();
            let mut device = String::new();
            let start = Instant::now();
            while lat.len() < 3 || start.elapsed() < per_point {
                let t = Instant::now();
                match run(&s, &model, &inputs, b, pref) {
                    Ok(inf) => device = inf.device.to_string(),
                    Err(e) => {
                        eprintln!("direct bench {pref:?} batch {b}: {e}");
                        break;
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let wall = start.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            out.push(json!({"device": device, "batch": b, "batches": lat.len(),
                "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                "rows_per_s": (lat.len() * b) as f64 / wall}));
        }
    }
    out
}

fn bench_dynamic(args: &Args, gpu: bool, rng: &mut Rng) -> Vec<Value> {
    let model = Arc::new(network(
        rng,
        &[512, 1024, 1024, 16],
        &[A::Gelu, A::Relu, A::Softmax],
    ));
    let dur = if args.quick {
        Duration::from_millis(150)
    } else {
        Duration::from_millis(500)
    };
    let clients: &[usize] = if args.quick {
        &[1, 16, 64]
    } else {
        &[1, 16, 64, 256]
    };
    let mut out = Vec::new();
    let mut devices = vec![DevicePref::Cpu];
    if gpu {
        devices.insert(0, DevicePref::Cuda);
    }
    for pref in devices {
        for batching in [false, true] {
            let s = if batching {
                scheduler(args, gpu, 256, Duration::from_micros(200))
            } else {
                scheduler(args, gpu, 1, Duration::ZERO)
            };
            for &c in clients {
                let inputs: Vec<Arc<[f32]>> = (0..c).map(|_| rng.vec(512, 1.0).into()).collect();
                let before = s.stats();
                let start = Instant::now();
                let lats = futures::executor::block_on(futures::future::join_all(
                    inputs.iter().map(|inp| {
                        let (s, model) = (&s, &model);
                        async move {
                            let mut lat = Vec::new();
                            let mut device = String::new();
                            while start.elapsed() < dur {
                                let t = Instant::now();
                                let req = Request {
                                    model: model.clone(),
                                    inputs: inp.clone(),
                                    rows: 1,
                                    device: pref,
                                    priority: 0,
                                    deadline: None,
                                };
                                match s.submit(req) {
                                    Ok(ticket) => match ticket.await {
                                        Ok(inf) => device = inf.device.to_string(),
                                        Err(e) => {
                                            eprintln!("dynamic bench: {e}");
                                            break;
                                        }
                                    },
                                    Err(e) => {
                                        eprintln!("dynamic bench: {e}");
                                        break;
                                    }
                                }
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            (lat, device)
                        }
                    }),
                ));
                let wall = start.elapsed().as_secs_f64();
                let after = s.stats();
                let device = lats
                    .iter()
                    .map(|(_, d)| d.clone())
                    .find(|d| !d.is_empty())
                    .unwrap_or_default();
                let mut all: Vec<f64> = lats.into_iter().flat_map(|(l, _)| l).collect();
                all.sort_by(f64::total_cmp);
                let batches = (after.batches_run - before.batches_run).max(1);
                let rows = after.rows_run - before.rows_run;
                out.push(json!({"device": device, "batching": batching, "clients": c,
                    "requests": all.len(), "req_per_s": all.len() as f64 / wall,
                    "p50_ms": percentile(&all, 0.5), "p99_ms": percentile(&all, 0.99),
                    "mean_batch_rows": rows as f64 / batches as f64}));
            }
        }
    }
    out
}

fn markdown(report: &Value) -> String {
    let mut m = String::new();
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
    m.push_str(&format!(
        "# beamline-gpu-check\n\nDevices: {}\n\nCPU threads: {}. Fallback reason: {}\n\n",
        report["devices"],
        report["cpu_threads"],
        report["fallback_reason"].as_str().unwrap_or("")
    ));
    m.push_str(&format!("## Agreement (ok: {})\n\n| model | batch | device | max abs err | max rel err | ok |\n|---|---|---|---|---|---|\n", report["agreement_ok"]));
    for r in report["agreement"].as_array().into_iter().flatten() {
        m.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.2e} | {} |\n",
            r["model"].as_str().unwrap_or(""),
            r["batch"],
            r["device"].as_str().unwrap_or(""),
            r["max_abs_err"].as_f64().unwrap_or(f64::NAN),
            r["max_rel_err"].as_f64().unwrap_or(f64::NAN),
            r["ok"]
        ));
    }
    m.push_str("\n## One request of B rows (model 512-1024-1024-16)\n\n| device | B | p50 ms | p99 ms | rows/s |\n|---|---|---|---|---|\n");
    for r in report["bench_direct"].as_array().into_iter().flatten() {
        m.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} |\n",
            r["device"].as_str().unwrap_or(""),
            r["batch"],
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            r["rows_per_s"].as_f64().unwrap_or(0.0)
        ));
    }
    m.push_str("\n## Closed-loop clients, one row each: dynamic batching on/off\n\n| device | batching | clients | req/s | p50 ms | p99 ms | mean batch rows |\n|---|---|---|---|---|---|---|\n");
    for r in report["bench_dynamic"].as_array().into_iter().flatten() {
        m.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.1} |\n",
            r["device"].as_str().unwrap_or(""),
            r["batching"],
            r["clients"],
            r["req_per_s"].as_f64().unwrap_or(0.0),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            r["mean_batch_rows"].as_f64().unwrap_or(0.0)
        ));
    }
    m
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("beamline-gpu-check: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let probe = scheduler(&args, true, 256, Duration::ZERO);
    let gpu = !probe.devices().is_empty();
    let devices: Vec<Value> = probe
        .devices()
        .iter()
        .map(|d| json!({"ordinal": d.ordinal, "name": d.name, "total_mib": d.total_memory >> 20,
            "budget_mib": d.budget >> 20, "slots": d.slots, "compute_capability": [d.compute_capability.0, d.compute_capability.1]}))
        .collect();
    eprintln!(
        "devices: {devices:?}; fallback reason: {:?}",
        probe.cpu_fallback_reason()
    );
    let (agreement, agreement_ok) = agreement(&args, &probe, gpu, &mut rng);
    eprintln!(
        "agreement ok: {agreement_ok} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let fallback_reason = probe.cpu_fallback_reason().to_owned();
    drop(probe);
    let direct = bench_direct(&args, gpu, &mut rng);
    eprintln!(
        "direct bench done ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let dynamic = bench_dynamic(&args, gpu, &mut rng);
    let report = json!({
        "devices": devices,
        "fallback_reason": fallback_reason,
        "cpu_threads": args.cpu_threads,
        "quick": args.quick,
        "agreement_ok": agreement_ok,
        "agreement": agreement,
        "bench_direct": direct,
        "bench_dynamic": dynamic,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let md = markdown(&report);
    println!("{md}");
    if let Some(p) = &args.out {
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&report).unwrap_or_default())
        {
            eprintln!("writing {p}: {e}");
        }
    }
    if let Some(p) = &args.markdown {
        if let Err(e) = std::fs::write(p, &md) {
            eprintln!("writing {p}: {e}");
        }
    }
    let ok = agreement_ok && (gpu || !args.require_gpu);
    if !ok {
        eprintln!("beamline-gpu-check: FAILED (agreement ok: {agreement_ok}, gpu used: {gpu})");
        std::process::exit(1);
    }
}
