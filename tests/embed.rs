//! `ai.embed` with the real model (sentence-transformers/all-MiniLM-L6-v2, installed by
//! `scripts/ensure-model.sh` under `$BEAMLINE_MODELS_DIR` or `~/.cache/beamline/models`):
//! end to end over NATS on the CPU fallback (CI has no GPU), and the decoder's limits.
//! The numerical agreement with the independent reference is gpu/tests/embed_ref.rs.

use std::time::Duration;

use beamline_testkit::fixtures::models_dir;
use beamline_worker::blocks::embed::{decode_job, MAX_INPUTS, MAX_INPUT_CHARS};
use beamline_worker::contract::{ErrorCode, Fields};
use serde_json::{json, Value};

fn job(inputs: Value, extra: Value) -> Value {
    let mut j = json!({"type": "ai.embed", "model": "all-MiniLM-L6-v2", "inputs": inputs});
    if let (Some(o), Some(e)) = (j.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    j
}

fn vectors(r: &Value) -> Vec<Vec<f64>> {
    r["result"]["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The job as the worker decodes it before the ack (no worker needed).
fn decode_code(job: Value, no_cuda: Option<&str>) -> Option<ErrorCode> {
    let mut text = serde_json::to_vec(&job).expect("json");
    let v = simd_json::to_borrowed_value(&mut text).expect("parses");
    decode_job(Fields::new(&v, "job"), no_cuda)
        .err()
        .map(|e| e.code)
}

#[test]
fn decoder_limits_and_codes() {
    let ok = job(json!(["a", ""]), json!({}));
    assert_eq!(decode_code(ok.clone(), None), None);
    let many: Vec<&str> = vec!["x"; MAX_INPUTS + 1];
    assert_eq!(
        decode_code(job(json!(many), json!({})), None),
        Some(ErrorCode::QuotaExceeded)
    );
    let long = "é".repeat(MAX_INPUT_CHARS + 1);
    assert_eq!(
        decode_code(job(json!([long]), json!({})), None),
        Some(ErrorCode::QuotaExceeded)
    );
    // Exactly at the limit, in multi-byte characters (more bytes than the limit): fine.
    let at = "é".repeat(MAX_INPUT_CHARS);
    assert_eq!(decode_code(job(json!([at]), json!({})), None), None);
    assert_eq!(
        decode_code(job(json!([]), json!({})), None),
        Some(ErrorCode::InvalidInput)
    );
    assert_eq!(
        decode_code(job(json!(["a", 3]), json!({})), None),
        Some(ErrorCode::InvalidFormat)
    );
    assert_eq!(
        decode_code(
            json!({"type": "ai.embed", "model": "all-MiniLM-L6-v2"}),
            None
        ),
        Some(ErrorCode::MissingRequiredField)
    );
    for bad in ["../etc", "a/b", ".hidden"] {
        let mut j = job(json!(["a"]), json!({}));
        j["model"] = json!(bad);
        assert_eq!(decode_code(j, None), Some(ErrorCode::InvalidInput), "{bad}");
    }
    assert_eq!(
        decode_code(job(json!(["a"]), json!({"device": "tpu"})), None),
        Some(ErrorCode::InvalidInput)
    );
    assert_eq!(
        decode_code(job(json!(["a"]), json!({"normalize": "yes"})), None),
        Some(ErrorCode::InvalidFormat)
    );
    // device "cuda" on a worker without one: 2002 before the ack; "auto" is fine.
    let no = Some("no CUDA driver");
    assert_eq!(
        decode_code(job(json!(["a"]), json!({"device": "cuda"})), no),
        Some(ErrorCode::ResourceUnavailable)
    );
    assert_eq!(
        decode_code(job(json!(["a"]), json!({"device": "auto"})), no),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_nats_with_the_real_model() {
    let models = models_dir();
    let nats = beamline_testkit::prelude::Nats::start();
    let worker = beamline_testkit::prelude::Worker::builder(&nats.url())
        .arg(&format!("--models-dir={}", models.display()))
        .start();
    let router = beamline_testkit::prelude::Router::connect(&nats.url()).await;
    beamline_testkit::prelude::ready(&router).await;
    let wait = |id: &'static str| {
        let seen = &router.seen;
        async move {
            seen.wait_for(
                beamline_testkit::prelude::RESULT,
                id,
                Duration::from_secs(120),
            )
            .await
        }
    };

    // The published example, an empty string, a non-ASCII one and one past 256 tokens.
    let long = "The detector readout chain digitises every channel and ships the samples to the counting room. ".repeat(20);
    let inputs = json!([
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
        "",
        "Zürich: naïve café, 東京の天気",
        long,
    ]);
    router
        .assign(&beamline_testkit::prelude::assignment(
            "emb-1",
            "acme",
            job(inputs, json!({})),
        ))
        .await;
    assert_eq!(router.ack("emb-1").await["status"], "accepted");
    let r = wait("emb-1").await;
    beamline_testkit::prelude::assert_result_shape(&r);
    assert_eq!(r["status"], "success", "{r}\n{}", worker.logs());
    let res = &r["result"];
    assert_eq!(res["model"], "all-MiniLM-L6-v2");
    assert_eq!(res["dim"], 384);
    assert_eq!(res["device"], "cpu");
    assert_eq!(r["metadata"]["device"], "cpu", "{r}");
    assert_eq!(res["truncated"], json!([5]), "{res}");
    let e = vectors(&r);
    assert_eq!(e.len(), 6);
    assert!(e.iter().all(|v| v.len() == 384));
    for (i, v) in e.iter().enumerate() {
        assert!(
            (dot(v, v).sqrt() - 1.0).abs() < 1e-4,
            "row {i} not unit length"
        );
    }
    for ((a, b), want) in [((0, 1), 0.6660), ((0, 2), 0.1046), ((1, 2), 0.1411)] {
        let s = dot(&e[a], &e[b]);
        assert!(
            (s - want).abs() < 5e-4,
            "similarity {a}-{b}: {s}, published {want}"
        );
    }
    // [CLS] [SEP] for "", 256 for the truncated one; the rest are short.
    let tokens = res["tokens"].as_u64().expect("tokens");
    assert!(
        (256 + 2 + 3 * 8..256 + 2 + 3 * 12 + 30).contains(&tokens),
        "{tokens}"
    );

    // normalize: false gives the raw mean (not unit length), same direction.
    router
        .assign(&beamline_testkit::prelude::assignment(
            "emb-raw",
            "acme",
            job(
                json!(["The weather is lovely today."]),
                json!({"normalize": false, "device": "cpu"}),
            ),
        ))
        .await;
    let r = wait("emb-raw").await;
    assert_eq!(r["status"], "success", "{r}");
    let raw = &vectors(&r)[0];
    let n = dot(raw, raw).sqrt();
    assert!((n - 1.0).abs() > 0.01, "norm {n}");
    assert!(dot(raw, &e[0]) / n > 0.99999);

    // Unknown model: 1001, not retried, to the DLQ.
    let mut j = job(json!(["x"]), json!({}));
    j["model"] = json!("no-such-model");
    router
        .assign(&beamline_testkit::prelude::assignment(
            "emb-unknown",
            "acme",
            j,
        ))
        .await;
    let r = wait("emb-unknown").await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["code"], 1001, "{r}");
    assert_eq!(r["error"]["retryable"], false, "{r}");
    router.dlq("emb-unknown").await;

    // device "cuda" on this GPU-less worker: rejected before the ack with 2002.
    router
        .assign(&beamline_testkit::prelude::assignment(
            "emb-cuda",
            "acme",
            job(json!(["x"]), json!({"device": "cuda"})),
        ))
        .await;
    let ack = router.ack("emb-cuda").await;
    assert_eq!(ack["status"], "rejected", "{ack}");
    assert_eq!(ack["error"]["code"], 2002, "{ack}");
    let r = wait("emb-cuda").await;
    assert_eq!(r["error"]["code"], 2002, "{r}");
}
