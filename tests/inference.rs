//! `ai.inference`: the block on real model files under a temporary FS root (CPU fallback,
//! since CI has no GPU), and once end to end over NATS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_gpu::{Activation, Layer, Model, Scheduler, SchedulerConfig};
use beamline_testkit::blocks::{self, exec_ctx, Executor};
use beamline_worker::blocks::inference::InferenceBlock;
use beamline_worker::blocks::Block;
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::{ErrorCode, Fields, TaskError};
use clap::Parser;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "tenant-a";

/// Layer 0 (2 → 3, relu): W0 = [[1, 2], [-1, 0.5], [0, -3]], b0 = [0.5, -1, 2].
/// Layer 1 (3 → 2, none): W1 = [[1, -1, 0.5], [2, 0, -1]], b1 = [0, 1].
/// x = [1, 2] → relu([5.5, -1, -4]) = [5.5, 0, 0] → [5.5, 12].
/// x = [-1, 0.5] → relu([0.5, 0.25, 0.5]) → [0.5 - 0.25 + 0.25, 1 - 0.5 + 1] = [0.5, 1.5].
fn hand_network() -> Model {
    Model::new(vec![
        Layer::new(
            2,
            3,
            vec![1.0, 2.0, -1.0, 0.5, 0.0, -3.0],
            vec![0.5, -1.0, 2.0],
            Activation::Relu,
        )
        .expect("l0"),
        Layer::new(
            3,
            2,
            vec![1.0, -1.0, 0.5, 2.0, 0.0, -1.0],
            vec![0.0, 1.0],
            Activation::None,
        )
        .expect("l1"),
    ])
    .expect("model")
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    gpu: Arc<Scheduler>,
    block: InferenceBlock,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(
            &[],
            SchedulerConfig {
                cpu_threads: 2,
                ..SchedulerConfig::default()
            },
        )
    }

    fn with(flags: &[&str], sched: SchedulerConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("fs");
        std::fs::create_dir_all(root.join(TENANT).join("models")).expect("mkdir");
        let mut args = vec!["beamline_worker"];
        args.extend_from_slice(flags);
        let config = Config::resolve(Cli::try_parse_from(args).expect("flags")).expect("config");
        let gpu = Arc::new(Scheduler::start(sched).expect("scheduler"));
        let block = InferenceBlock::new(&config, gpu.clone(), root.clone()).expect("block");
        Fixture {
            _dir: dir,
            root,
            gpu,
            block,
        }
    }

    fn tenant_dir(&self) -> PathBuf {
        self.root.join(TENANT)
    }

    fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.tenant_dir().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write model");
    }

    fn run(&self, job: Value) -> Result<(Value, Option<String>), TaskError> {
        blocks::run(
            &self.block,
            TENANT,
            &job,
            Duration::from_secs(10),
            Executor::Tokio,
        )
        .map(|o| (o.result.into_value(), o.device))
    }
}

/// A safetensors file written by hand: little-endian header length, JSON header, then
/// `data_len` zero bytes of tensor data.
fn safetensors_file(header: &Value, data_len: usize) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

fn job(model: &str, inputs: Value) -> Value {
    json!({"type": "ai.inference", "model": model, "inputs": inputs})
}

#[track_caller]
fn expect_code(r: Result<(Value, Option<String>), TaskError>, code: ErrorCode) -> TaskError {
    match r {
        Ok((v, _)) => panic!("expected {code:?}, got {v}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
    }
}

#[test]
fn hand_computed_network_on_the_cpu() {
    let f = Fixture::new();
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    let (out, device) = f
        .run(job("models/x.safetensors", json!([[1, 2], [-1.0, 0.5]])))
        .expect("runs");
    assert_eq!(out["outputs"], json!([[5.5, 12.0], [0.5, 1.5]]), "{out}");
    assert_eq!(out["batch_size"], 2);
    assert_eq!(device.as_deref(), Some("cpu"));
    // A leading slash is tenant-relative, as for fs.get; "cpu" asked explicitly works too.
    let (out, device) = f
        .run(json!({"type": "ai.inference", "model": "/models/x.safetensors", "inputs": [[1, 2]], "device": "cpu"}))
        .expect("runs");
    assert_eq!(out["outputs"], json!([[5.5, 12.0]]));
    assert_eq!(device.as_deref(), Some("cpu"));
}

#[test]
fn outputs_are_written_with_their_shortest_decimal_form() {
    let f = Fixture::new();
    let m = Model::new(vec![Layer::new(
        1,
        1,
        vec![1.0],
        vec![0.0],
        Activation::None,
    )
    .expect("layer")])
    .expect("model");
    f.put("models/id.safetensors", &m.to_safetensors());
    let (out, _) = f
        .run(job("models/id.safetensors", json!([[0.1]])))
        .expect("runs");
    assert_eq!(out["outputs"][0][0].to_string(), "0.1");
}

#[test]
fn auto_runs_on_the_cpu_and_cuda_without_a_device_is_2002() {
    let f = Fixture::new();
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    let (_, device) = f
        .run(json!({"type": "ai.inference", "model": "models/x.safetensors", "inputs": [[1, 2]], "device": "auto"}))
        .expect("runs");
    assert_eq!(device.as_deref(), Some("cpu"));
    if f.gpu.has_cuda() {
        return;
    }
    let e = expect_code(
        f.run(json!({"type": "ai.inference", "model": "models/x.safetensors", "inputs": [[1, 2]], "device": "cuda"})),
        ErrorCode::ResourceUnavailable,
    );
    assert!(e.message.contains("no CUDA device"), "{e}");
    let e = expect_code(
        f.run(json!({"type": "ai.inference", "model": "models/x.safetensors", "inputs": [[1, 2]], "device": "tpu"})),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("job.device"), "{e}");
}

#[test]
fn model_files_resolve_beneath_the_tenant_root() {
    let f = Fixture::new();
    let e = expect_code(
        f.run(job("models/missing.safetensors", json!([[1, 2]]))),
        ErrorCode::ResourceUnavailable,
    );
    assert!(e.message.contains("not found"), "{e}");
    // Another tenant's file is not visible.
    std::fs::create_dir_all(f.root.join("other/models")).expect("mkdir");
    std::fs::write(
        f.root.join("other/models/x.safetensors"),
        hand_network().to_safetensors(),
    )
    .expect("write");
    expect_code(
        f.run(job("../other/models/x.safetensors", json!([[1, 2]]))),
        ErrorCode::PermissionDenied,
    );
    // A symlink out of the root is refused even though its target exists.
    std::os::unix::fs::symlink(
        f.root.join("other/models/x.safetensors"),
        f.tenant_dir().join("models/link.safetensors"),
    )
    .expect("symlink");
    expect_code(
        f.run(job("models/link.safetensors", json!([[1, 2]]))),
        ErrorCode::PermissionDenied,
    );
    // A directory is not a model.
    expect_code(
        f.run(job("models", json!([[1, 2]]))),
        ErrorCode::InvalidInput,
    );
    expect_code(
        f.run(job("models/", json!([[1, 2]]))),
        ErrorCode::InvalidInput,
    );
}

#[test]
fn bad_model_files_are_1001() {
    let f = Fixture::new();
    f.put("models/junk.safetensors", b"definitely not safetensors");
    let e = expect_code(
        f.run(job("models/junk.safetensors", json!([[1, 2]]))),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("not a safetensors file"), "{e}");

    // Valid safetensors, but no layer list in the metadata.
    let nometa = json!({"w": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}});
    f.put("models/nometa.safetensors", &safetensors_file(&nometa, 4));
    let e = expect_code(
        f.run(job("models/nometa.safetensors", json!([[1]]))),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("__metadata__"), "{e}");

    // Layers whose shapes do not chain: 2 → 3, then a layer taking 4.
    let layers = r#"[{"weight":"w0","bias":"b0","activation":"relu"},{"weight":"w1","bias":"b1"}]"#;
    let mismatch = json!({
        "__metadata__": {"layers": layers},
        "w0": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24]},
        "b0": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]},
        "w1": {"dtype": "F32", "shape": [1, 4], "data_offsets": [36, 52]},
        "b1": {"dtype": "F32", "shape": [1], "data_offsets": [52, 56]},
    });
    f.put(
        "models/mismatch.safetensors",
        &safetensors_file(&mismatch, 56),
    );
    let e = expect_code(
        f.run(job("models/mismatch.safetensors", json!([[1, 2]]))),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("shape mismatch"), "{e}");
}

#[test]
fn bad_inputs() {
    let f = Fixture::new();
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    let m = "models/x.safetensors";
    let e = expect_code(f.run(job(m, json!([[1, 2, 3]]))), ErrorCode::InvalidInput);
    assert!(
        e.message.contains("rows have 3 values but model") && e.message.contains("takes 2"),
        "{e}"
    );
    let e = expect_code(f.run(job(m, json!([[1, 2], [3]]))), ErrorCode::InvalidInput);
    assert!(e.message.contains("row 1 has 1 values"), "{e}");
    expect_code(f.run(job(m, json!([]))), ErrorCode::InvalidInput);
    expect_code(f.run(job(m, json!([[]]))), ErrorCode::InvalidInput);
    // Beyond the f32 range: infinite once converted.
    let e = expect_code(f.run(job(m, json!([[1e39, 0]]))), ErrorCode::InvalidInput);
    assert!(
        e.message.contains("row 0, column 0 is not a finite number"),
        "{e}"
    );
    expect_code(f.run(job(m, json!([["1", 2]]))), ErrorCode::InvalidFormat);
    expect_code(f.run(job(m, json!([1, 2]))), ErrorCode::InvalidFormat);
    expect_code(f.run(job(m, json!("1,2"))), ErrorCode::InvalidFormat);
    expect_code(
        f.run(json!({"type": "ai.inference", "model": m})),
        ErrorCode::MissingRequiredField,
    );
    expect_code(
        f.run(json!({"type": "ai.inference", "inputs": [[1, 2]]})),
        ErrorCode::MissingRequiredField,
    );
    expect_code(
        f.run(json!({"type": "ai.inference", "model": 5, "inputs": [[1, 2]]})),
        ErrorCode::InvalidFormat,
    );
}

/// JSON cannot carry a NaN, but a value built in memory can: the block still refuses it.
#[test]
fn nan_input_is_1001() {
    use simd_json::prelude::*;
    let f = Fixture::new();
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    let mut bytes =
        serde_json::to_vec(&job("models/x.safetensors", json!([[1.0, 2.0]]))).expect("json");
    let mut value = simd_json::to_borrowed_value(&mut bytes).expect("parse");
    let inputs = value
        .get_mut("inputs")
        .and_then(|v| v.as_array_mut())
        .expect("inputs");
    let row = inputs[0].as_array_mut().expect("row");
    row[1] = simd_json::BorrowedValue::from(f64::NAN);
    let cancel = CancellationToken::new();
    let ctx = exec_ctx(
        TENANT,
        "a-1",
        Instant::now() + Duration::from_secs(10),
        &cancel,
    );
    let r = blocks::run_parsed(&f.block, &value, &ctx, Executor::Tokio)
        .map(|o| (o.result.into_value(), o.device));
    let e = expect_code(r, ErrorCode::InvalidInput);
    assert!(e.message.contains("row 0, column 1"), "{e}");
}

#[test]
fn model_is_parsed_once_and_reloaded_when_the_file_changes() {
    let f = Fixture::new();
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    for _ in 0..3 {
        f.run(job("models/x.safetensors", json!([[1, 2]])))
            .expect("runs");
    }
    let st = f.gpu.stats();
    assert_eq!((st.model_loads, st.model_cache_hits), (1, 2), "{st:?}");
    // A different file at the same path (other size): parsed again.
    let bigger = Model::new(vec![Layer::new(
        2,
        4,
        vec![1.0; 8],
        vec![0.0; 4],
        Activation::Relu,
    )
    .expect("l")])
    .expect("m");
    f.put("models/x.safetensors", &bigger.to_safetensors());
    let (out, _) = f
        .run(job("models/x.safetensors", json!([[1, 2]])))
        .expect("runs");
    assert_eq!(out["outputs"], json!([[3.0, 3.0, 3.0, 3.0]]));
    assert_eq!(f.gpu.stats().model_loads, 2);
}

#[test]
fn a_model_over_the_memory_budget_is_2004() {
    let f = Fixture::with(&["--gpu-memory-budget-mb", "1"], SchedulerConfig::default());
    let big = Model::new(vec![Layer::new(
        600,
        600,
        vec![0.0; 360_000],
        vec![0.0; 600],
        Activation::None,
    )
    .expect("l")])
    .expect("m");
    f.put("models/big.safetensors", &big.to_safetensors());
    let e = expect_code(
        f.run(job("models/big.safetensors", json!([vec![0; 600]]))),
        ErrorCode::QuotaExceeded,
    );
    assert!(e.message.contains("memory budget"), "{e}");
}

#[test]
fn concurrent_jobs_for_one_model_share_a_batch() {
    let f = Fixture::with(
        &[],
        SchedulerConfig {
            max_queue_delay: Duration::from_millis(300),
            max_batch_size: 64,
            ..SchedulerConfig::default()
        },
    );
    f.put("models/x.safetensors", &hand_network().to_safetensors());
    f.run(job("models/x.safetensors", json!([[0, 0]])))
        .expect("warms the model cache");
    let before = f.gpu.stats().batches_run;
    let jobs: Vec<Vec<u8>> = (0..4)
        .map(|i| serde_json::to_vec(&job("models/x.safetensors", json!([[i, 1]]))).expect("json"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outs = rt.block_on(async {
        let mut bufs = jobs;
        let values: Vec<_> = bufs
            .iter_mut()
            .map(|b| simd_json::to_borrowed_value(b).expect("parse"))
            .collect();
        let cancel = CancellationToken::new();
        let ctx = exec_ctx(
            TENANT,
            "a",
            Instant::now() + Duration::from_secs(10),
            &cancel,
        );
        let decoded: Vec<_> = values
            .iter()
            .map(|v| {
                f.block
                    .decode(Fields::new(v, "job"), &ctx)
                    .expect("decodes")
            })
            .collect();
        futures::future::join_all(decoded.iter().map(|d| f.block.attempt(d, &ctx))).await
    });
    assert_eq!(f.gpu.stats().batches_run - before, 1);
    for (i, o) in outs.into_iter().enumerate() {
        let o = o.expect("runs");
        assert_eq!(o.result.to_value()["batch_size"], 4);
        let want = hand_network()
            .forward_cpu(&[i as f32, 1.0], 1)
            .expect("alone");
        assert_eq!(o.result.to_value()["outputs"], json!([want]));
    }
}

fn write_model(root: &Path, tenant: &str, rel: &str, m: &Model) {
    let p = root.join(tenant).join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, m.to_safetensors()).expect("write");
}

/// Over NATS: the result carries the outputs and `metadata.device`; a missing model is a
/// 2002 error result and a DLQ entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_nats() {
    let nats = beamline_testkit::prelude::Nats::start();
    let worker = beamline_testkit::prelude::Worker::builder(&nats.url()).start();
    write_model(
        &worker.fs_root,
        "acme",
        "models/x.safetensors",
        &hand_network(),
    );
    let router = beamline_testkit::prelude::Router::connect(&nats.url()).await;
    beamline_testkit::prelude::ready(&router).await;

    let a = beamline_testkit::prelude::assignment(
        "inf-1",
        "acme",
        job("models/x.safetensors", json!([[1, 2], [-1, 0.5]])),
    );
    router.assign(&a).await;
    assert_eq!(router.ack("inf-1").await["status"], "accepted");
    let r = router.result("inf-1").await;
    beamline_testkit::prelude::assert_result_shape(&r);
    assert_eq!(r["status"], "success", "{r}\n{}", worker.logs());
    assert_eq!(
        r["result"]["outputs"],
        json!([[5.5, 12.0], [0.5, 1.5]]),
        "{r}"
    );
    assert_eq!(r["result"]["batch_size"], 2);
    assert_eq!(r["metadata"]["device"], "cpu", "{r}");

    router
        .assign(&beamline_testkit::prelude::assignment(
            "inf-missing",
            "acme",
            job("models/nope.safetensors", json!([[1, 2]])),
        ))
        .await;
    let r = router.result("inf-missing").await;
    assert_eq!(r["error"]["code"], 2002, "{r}");
    router.dlq("inf-missing").await;

    let metrics = worker.metrics().await;
    assert!(metrics.contains("worker_gpu_devices 0"), "{metrics}");
    assert!(
        metrics.contains("worker_pool_queue_depth{pool=\"gpu\"} 0"),
        "{metrics}"
    );
}
