//! `beamline-embed-check`: the `ai.embed` encoder check and bench (`gpu/README.md`).
//!
//! 1. Agreement: the fixed sentence set (`gpu/reference/sentences.json`) embedded on each
//!    CUDA device and on the CPU path, compared per sentence with a reference file
//!    (`--reference`, written by `gpu/reference/embed_ref.py` or, on a device machine,
//!    `gpu/reference/st_ref.py` with sentence-transformers): cosine ≥ `--min-cosine`.
//! 2. Bench: one request of B sentences at a time (B from `--batches`), through the
//!    scheduler as the worker runs it; p50/p99 latency per request and sentences/s.
//! 3. With `--clients C`: C closed-loop clients of one sentence each, dynamic batching on
//!    (`--gpu-max-batch-size` 256 and a 200 µs window) and off (batch 1).
//!
//! Writes JSON (`--out`) and Markdown (`--markdown`). Exit 0 when every agreement check
//! passed (and, with `--require-gpu`, a GPU was used), else 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_gpu::{DevicePref, EmbedRequest, Encoder, Scheduler, SchedulerConfig};
use serde_json::{json, Value};

struct Args {
    model: PathBuf,
    sentences: PathBuf,
    reference: Option<PathBuf>,
    min_cosine: f64,
    batches: Vec<usize>,
    iters: usize,
    clients: usize,
    out: Option<String>,
    markdown: Option<String>,
    require_gpu: bool,
    gpu_slots: usize,
    cpu_threads: usize,
    cpu: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::new(),
        sentences: PathBuf::from("gpu/reference/sentences.json"),
        reference: None,
        min_cosine: 0.9999,
        batches: vec![1, 8, 64],
        iters: 30,
        clients: 0,
        out: None,
        markdown: None,
        require_gpu: false,
        gpu_slots: 2,
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |s: String, name: &str| s.parse::<usize>().map_err(|e| format!("{name}: {e}"));
        match arg.as_str() {
            "--model" => a.model = PathBuf::from(val("--model")?),
            "--sentences" => a.sentences = PathBuf::from(val("--sentences")?),
            "--reference" => a.reference = Some(PathBuf::from(val("--reference")?)),
            "--min-cosine" => {
                a.min_cosine = val("--min-cosine")?
                    .parse()
                    .map_err(|e| format!("--min-cosine: {e}"))?
            }
            "--batches" => {
                a.batches = val("--batches")?
                    .split(',')
                    .map(|s| num(s.to_owned(), "--batches"))
                    .collect::<Result<_, _>>()?
            }
            "--iters" => a.iters = num(val("--iters")?, "--iters")?,
            "--clients" => a.clients = num(val("--clients")?, "--clients")?,
            "--out" => a.out = Some(val("--out")?),
            "--markdown" => a.markdown = Some(val("--markdown")?),
            "--require-gpu" => a.require_gpu = true,
            "--no-cpu-bench" => a.cpu = false,
            "--gpu-slots" => a.gpu_slots = num(val("--gpu-slots")?, "--gpu-slots")?,
            "--cpu-threads" => a.cpu_threads = num(val("--cpu-threads")?, "--cpu-threads")?,
            "-h" | "--help" => {
                println!("beamline-embed-check --model DIR [--sentences S.json] [--reference R.json] [--min-cosine X] [--batches 1,8,64] [--iters N] [--clients C] [--out F.json] [--markdown F.md] [--require-gpu] [--no-cpu-bench] [--gpu-slots N] [--cpu-threads N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err("--model DIR is required".into());
    }
    Ok(a)
}

fn sentence_set(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let long = v["long"]
        .as_str()
        .unwrap_or("")
        .repeat(v["long_repeat"].as_u64().unwrap_or(1) as usize);
    Ok(v["sentences"]
        .as_array()
        .ok_or("sentences.json: no `sentences` list")?
        .iter()
        .filter_map(|s| s.as_str())
        .map(|s| {
            if s == "LONG" {
                long.clone()
            } else {
                s.to_owned()
            }
        })
        .collect())
}

fn reference(path: &PathBuf) -> Result<Vec<Vec<f64>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    v["embeddings"]
        .as_array()
        .ok_or("reference: no `embeddings`")?
        .iter()
        .map(|r| {
            r.as_array()
                .ok_or("reference: a row is not a list".to_owned())
                .map(|r| r.iter().filter_map(|x| x.as_f64()).collect())
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum();
    let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn embed(
    s: &Scheduler,
    enc: &Arc<Encoder>,
    seqs: Vec<Vec<u32>>,
    device: DevicePref,
) -> Result<beamline_gpu::Embeddings, String> {
    let t = s
        .submit_embed(EmbedRequest {
            encoder: enc.clone(),
            inputs: seqs,
            normalize: true,
            device,
            priority: 0,
            deadline: None,
        })
        .map_err(|e| e.to_string())?;
    futures::executor::block_on(t.wait()).map_err(|e| e.to_string())
}

/// Typical retrieval-sized sentences (10–20 tokens), cycled to fill a batch.
const BENCH: [&str; 8] = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A man is playing a guitar on the stage in front of a large crowd.",
    "The quarterly tax report is due on Monday morning.",
    "How do I reset the password of my account?",
    "Beamline operators schedule maintenance during the winter shutdown.",
    "Neural networks map sentences to vectors that capture their meaning.",
];

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("beamline-embed-check: {e}");
            std::process::exit(2);
        }
    };
    let enc = match Encoder::load(&a.model, "all-MiniLM-L6-v2") {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("beamline-embed-check: {}: {e}", a.model.display());
            std::process::exit(2);
        }
    };
    let cfg = |batch: usize, delay_us: u64| SchedulerConfig {
        gpu_slots: a.gpu_slots,
        cpu_slots: 1,
        cpu_threads: a.cpu_threads,
        max_batch_size: batch,
        max_queue_delay: Duration::from_micros(delay_us),
        ..SchedulerConfig::default()
    };
    // The worker's defaults: batch 64, 500 µs.
    let sched = match Scheduler::start(cfg(64, 500)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("beamline-embed-check: {e}");
            std::process::exit(2);
        }
    };
    let gpu = sched.has_cuda();
    let mut md = String::from("# beamline-embed-check\n\n");
    md += &format!(
        "Model: {} (dim {}, max_seq_length {}). Devices: {:?}. CPU threads: {}. {}\n\n",
        a.model.display(),
        enc.dim(),
        enc.max_seq_length(),
        sched
            .devices()
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
        a.cpu_threads,
        if gpu {
            String::new()
        } else {
            format!("Fallback reason: {}", sched.cpu_fallback_reason())
        }
    );
    let mut ok = true;
    let mut report =
        json!({"devices": sched.devices().iter().map(|d| &d.name).collect::<Vec<_>>()});

    // 1. Agreement.
    let mut prefs = vec![];
    if gpu {
        prefs.push(DevicePref::Cuda);
    }
    prefs.push(DevicePref::Cpu);
    if let Some(rp) = &a.reference {
        let (texts, want) = match (sentence_set(&a.sentences), reference(rp)) {
            (Ok(t), Ok(w)) if t.len() == w.len() => (t, w),
            (t, w) => {
                eprintln!(
                    "agreement inputs unusable: sentences {:?}, reference {:?}",
                    t.map(|t| t.len()),
                    w.map(|w| w.len())
                );
                std::process::exit(2);
            }
        };
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| enc.tokenize(t).map(|t| t.ids).unwrap_or_default())
            .collect();
        md += &format!(
            "## Agreement with {} (cosine ≥ {})\n\n| device | sentence | tokens | cosine | ok |\n|---|---|---|---|---|\n",
            rp.display(),
            a.min_cosine
        );
        let mut rows = Vec::new();
        for p in &prefs {
            match embed(&sched, &enc, seqs.clone(), *p) {
                Ok(e) => {
                    for (i, w) in want.iter().enumerate() {
                        let c = cosine(e.row(i), w);
                        let good = c >= a.min_cosine;
                        ok &= good;
                        md += &format!(
                            "| {} | {i} | {} | {c:.7} | {good} |\n",
                            e.device,
                            seqs[i].len()
                        );
                        rows.push(json!({"device": e.device.to_string(), "sentence": i, "cosine": c, "ok": good}));
                    }
                }
                Err(err) => {
                    ok = false;
                    md += &format!("| {p:?} | all | - | error: {err} | false |\n");
                }
            }
        }
        report["agreement"] = json!(rows);
        md += "\n";
    }

    // 2. One request of B sentences at a time.
    md += "## One request of B sentences (10–16 tokens each), worker defaults (batch 64, 500 µs)\n\n| device | B | requests | p50 ms | p99 ms | sentences/s |\n|---|---|---|---|---|---|\n";
    let mut bench = Vec::new();
    let toks: Vec<Vec<u32>> = BENCH
        .iter()
        .map(|t| enc.tokenize(t).map(|t| t.ids).unwrap_or_default())
        .collect();
    let mut bench_prefs = vec![];
    if gpu {
        bench_prefs.push(DevicePref::Cuda);
    }
    if a.cpu {
        bench_prefs.push(DevicePref::Cpu);
    }
    for p in &bench_prefs {
        for &b in &a.batches {
            let seqs: Vec<Vec<u32>> = (0..b).map(|i| toks[i % toks.len()].clone()).collect();
            // Warm-up (weights upload, caches).
            let _ = embed(&sched, &enc, seqs.clone(), *p);
            let mut lat = Vec::with_capacity(a.iters);
            let t0 = Instant::now();
            let mut dev = String::new();
            for _ in 0..a.iters {
                let t = Instant::now();
                match embed(&sched, &enc, seqs.clone(), *p) {
                    Ok(e) => dev = e.device.to_string(),
                    Err(err) => {
                        eprintln!("bench {p:?} B={b}: {err}");
                        ok = false;
                        break;
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let wall = t0.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            let sps = (lat.len() * b) as f64 / wall;
            md += &format!(
                "| {dev} | {b} | {} | {:.2} | {:.2} | {sps:.1} |\n",
                lat.len(),
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
            bench.push(json!({"device": dev, "batch": b, "requests": lat.len(), "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "sentences_per_s": sps}));
        }
    }
    report["bench"] = json!(bench);

    // 3. Closed-loop clients of one sentence each, batching on and off.
    if a.clients > 0 {
        md += &format!("\n## {} closed-loop clients, one sentence each\n\n| device | batching | requests | p50 ms | p99 ms | sentences/s |\n|---|---|---|---|---|---|\n", a.clients);
        let mut rows = Vec::new();
        for p in &bench_prefs {
            for (label, batch, delay) in [("on (256, 200 µs)", 256usize, 200u64), ("off (1)", 1, 0)]
            {
                let s = match Scheduler::start(cfg(batch, delay)) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        eprintln!("{e}");
                        ok = false;
                        continue;
                    }
                };
                let per = a.iters.max(1) * 4;
                let t0 = Instant::now();
                let handles: Vec<_> = (0..a.clients)
                    .map(|c| {
                        let (s, enc, seq, p) =
                            (s.clone(), enc.clone(), toks[c % toks.len()].clone(), *p);
                        std::thread::spawn(move || {
                            let mut lat = Vec::with_capacity(per);
                            for _ in 0..per {
                                let t = Instant::now();
                                if embed(&s, &enc, vec![seq.clone()], p).is_err() {
                                    break;
                                }
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            lat
                        })
                    })
                    .collect();
                let mut lat: Vec<f64> = handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect();
                let wall = t0.elapsed().as_secs_f64();
                lat.sort_by(f64::total_cmp);
                let sps = lat.len() as f64 / wall;
                let dev = if *p == DevicePref::Cpu { "cpu" } else { "cuda" };
                md += &format!(
                    "| {dev} | {label} | {} | {:.2} | {:.2} | {sps:.1} |\n",
                    lat.len(),
                    pct(&lat, 0.5),
                    pct(&lat, 0.99)
                );
                rows.push(json!({"device": dev, "batching": label, "requests": lat.len(), "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "sentences_per_s": sps}));
            }
        }
        report["clients"] = json!(rows);
    }

    if a.require_gpu && !gpu {
        md += &format!(
            "\n**No GPU used** ({}), but --require-gpu was given.\n",
            sched.cpu_fallback_reason()
        );
        ok = false;
    }
    report["ok"] = json!(ok);
    print!("{md}");
    if let Some(p) = &a.out {
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&report).unwrap_or_default())
        {
            eprintln!("{p}: {e}");
        }
    }
    if let Some(p) = &a.markdown {
        if let Err(e) = std::fs::write(p, &md) {
            eprintln!("{p}: {e}");
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
