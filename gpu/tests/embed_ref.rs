//! The CPU encoder against an independent reference: `gpu/reference/embed_ref.py`, a
//! NumPy implementation of all-MiniLM-L6-v2 in float64 with the `tokenizers` Python
//! package, run here on the same model files. The reference first checks itself against
//! sentence-transformers' published example similarities (0.6660, 0.1046, 0.1411).
//!
//! Needs the model and the reference's Python packages: `scripts/ensure-model.sh`
//! (run by scripts/test.sh and .ci/run). The model directory is
//! `$BEAMLINE_MODELS_DIR/all-MiniLM-L6-v2`, else `~/.cache/beamline/models/all-MiniLM-L6-v2`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use beamline_gpu::{DevicePref, EmbedRequest, Encoder, Scheduler, SchedulerConfig};
use serde_json::Value;

fn model_dir() -> PathBuf {
    let base = std::env::var_os("BEAMLINE_MODELS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/beamline/models")
        });
    let dir = base.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no model: run scripts/ensure-model.sh first",
        dir.display()
    );
    dir
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn sentences() -> Vec<String> {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("sentences.json")).expect("sentences"),
    )
    .expect("json");
    let long = spec["long"]
        .as_str()
        .expect("long")
        .repeat(spec["long_repeat"].as_u64().expect("repeat") as usize);
    spec["sentences"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| match s.as_str().expect("string") {
            "LONG" => long.clone(),
            s => s.to_owned(),
        })
        .collect()
}

struct Reference {
    tokens: Vec<usize>,
    truncated: Vec<bool>,
    embeddings: Vec<Vec<f64>>,
}

/// Runs the NumPy reference (it exits non-zero if the published similarities do not
/// come out).
fn reference(dir: &Path) -> Reference {
    let out = tempfile::NamedTempFile::new().expect("tmp");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let st = Command::new(python)
        .arg(reference_dir().join("embed_ref.py"))
        .arg(dir)
        .arg("--check-published")
        .arg("--sentences")
        .arg(reference_dir().join("sentences.json"))
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("python3 runs (scripts/ensure-model.sh installs its packages)");
    assert!(st.success(), "the reference failed: {st}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path()).expect("out")).expect("json");
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    Reference {
        tokens: nums(&v["tokens"]).iter().map(|&t| t as usize).collect(),
        truncated: v["truncated"]
            .as_array()
            .expect("truncated")
            .iter()
            .map(|b| b.as_bool().expect("bool"))
            .collect(),
        embeddings: v["embeddings"]
            .as_array()
            .expect("embeddings")
            .iter()
            .map(nums)
            .collect(),
    }
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn cpu_encoder_matches_the_numpy_reference() {
    let dir = model_dir();
    let reference = reference(&dir);
    let texts = sentences();
    assert_eq!(reference.embeddings.len(), texts.len());
    let enc = Encoder::load(&dir, "all-MiniLM-L6-v2").expect("model loads");
    assert_eq!(enc.dim(), 384);
    assert_eq!(
        enc.max_seq_length(),
        256,
        "sentence_bert_config.json, not the 128 of tokenizer.json"
    );

    // Tokenizer: same lengths (after truncation at 256) and the same truncation flags.
    let toks: Vec<_> = texts
        .iter()
        .map(|t| enc.tokenize(t).expect("tokenizes"))
        .collect();
    let lens: Vec<usize> = toks.iter().map(|t| t.ids.len()).collect();
    assert_eq!(
        lens, reference.tokens,
        "token counts differ from the Python tokenizer"
    );
    let truncated: Vec<bool> = toks.iter().map(|t| t.truncated).collect();
    assert_eq!(truncated, reference.truncated);
    assert!(
        lens.contains(&256) && truncated.contains(&true),
        "the long sentence is cut at 256"
    );
    assert_eq!(lens[5], 2, "the empty string is [CLS] [SEP]");

    // One packed batch on the calling thread.
    let seqs: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let got = enc.embed_cpu(&seqs, true);
    for (i, want) in reference.embeddings.iter().enumerate() {
        let row = &got[i * 384..(i + 1) * 384];
        let c = cosine(row, want);
        assert!(c >= 0.99999, "sentence {i}: cosine {c} to the reference");
        let norm = dot(row, row).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i}: norm {norm}");
    }
    // The published example, from the Rust side too.
    let e = |i: usize| &got[i * 384..(i + 1) * 384];
    for ((a, b), want) in [((0, 1), 0.6660), ((0, 2), 0.1046), ((1, 2), 0.1411)] {
        let s = dot(e(a), e(b));
        assert!(
            (s - want).abs() < 5e-4,
            "similarity {a}-{b}: {s}, published {want}"
        );
    }
    // Paraphrases closer than unrelated sentences.
    let (guitar, perform, tax) = (e(6), e(7), e(8));
    assert!(dot(guitar, perform) > dot(guitar, tax) + 0.2);
    assert!(dot(guitar, perform) > dot(perform, tax) + 0.2);

    // Each sentence alone gives the same embedding as in the batch (no cross-talk
    // between packed sequences).
    for i in [3, 5] {
        let alone = enc.embed_cpu(&[seqs[i]], true);
        let c = cosine(
            &alone,
            &got[i * 384..(i + 1) * 384]
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<_>>(),
        );
        assert!(c >= 0.999999, "sentence {i} alone vs in batch: {c}");
    }

    // Through the scheduler: length buckets split and put back in order, the
    // multi-threaded CPU path, normalize off.
    let sched = Scheduler::start(SchedulerConfig {
        cpu_threads: 2,
        max_batch_size: 4,
        max_queue_delay: Duration::from_micros(200),
        ..SchedulerConfig::default()
    })
    .expect("scheduler");
    let enc = Arc::new(enc);
    let ticket = sched
        .submit_embed(EmbedRequest {
            encoder: enc.clone(),
            inputs: toks.iter().map(|t| t.ids.clone()).collect(),
            normalize: false,
            device: DevicePref::Auto,
            priority: 0,
            deadline: None,
        })
        .expect("submitted");
    let out = futures::executor::block_on(ticket.wait()).expect("embedded");
    assert_eq!((out.n, out.dim), (texts.len(), 384));
    assert_eq!(out.device.to_string(), "cpu");
    for (i, want) in reference.embeddings.iter().enumerate() {
        let c = cosine(out.row(i), want);
        assert!(c >= 0.99999, "scheduler, sentence {i}: cosine {c}");
    }
    let norm0 = dot(out.row(0), out.row(0)).sqrt();
    assert!(
        (norm0 - 1.0).abs() > 0.01,
        "normalize: false leaves the mean as is ({norm0})"
    );
    // Four length buckets (16, 32, 64, 256) in batches of at most 4.
    assert!(sched.stats().batches_run >= 4, "{:?}", sched.stats());
}
