//! The scheduler on its CPU backend: batching, priority, the model cache, discovery
//! without a driver, and request validation. Everything here also holds on a GPU machine
//! except the tests that say they need no driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_gpu::{
    Activation, Device, DevicePref, ErrorKind, Inference, Layer, Model, ModelKey, Request,
    Scheduler, SchedulerConfig,
};
use futures::executor::block_on;
use futures::future::join_all;

fn cpu_scheduler(max_batch: usize, delay: Duration) -> Scheduler {
    Scheduler::start(SchedulerConfig {
        gpu_slots: 0,
        cpu_slots: 1,
        cpu_threads: 2,
        max_batch_size: max_batch,
        max_queue_delay: delay,
        ..SchedulerConfig::default()
    })
    .expect("starts")
}

/// 3 → 4 (tanh) → 2 (softmax), weights from a fixed pattern; `salt` makes different models.
fn model(salt: f32) -> Arc<Model> {
    let w0: Vec<f32> = (0..12)
        .map(|i| ((i as f32 * 0.37 + salt).sin()) * 0.8)
        .collect();
    let w1: Vec<f32> = (0..8)
        .map(|i| ((i as f32 * 0.91 - salt).cos()) * 0.6)
        .collect();
    Arc::new(
        Model::new(vec![
            Layer::new(3, 4, w0, vec![0.1, -0.2, 0.0, 0.3], Activation::Tanh).expect("l0"),
            Layer::new(4, 2, w1, vec![0.0, 0.05], Activation::Softmax).expect("l1"),
        ])
        .expect("model"),
    )
}

fn request(m: &Arc<Model>, row: [f32; 3], priority: i64) -> Request {
    Request {
        model: m.clone(),
        inputs: Arc::from(row.to_vec()),
        rows: 1,
        device: DevicePref::Auto,
        priority,
        deadline: None,
    }
}

fn row(i: usize) -> [f32; 3] {
    [i as f32 * 0.1, 1.0 - i as f32 * 0.2, (i % 3) as f32 - 1.0]
}

async fn run_all(s: &Scheduler, reqs: Vec<Request>) -> Vec<Inference> {
    let tickets: Vec<_> = reqs
        .into_iter()
        .map(|r| s.submit(r).expect("queued"))
        .collect();
    join_all(tickets)
        .await
        .into_iter()
        .map(|r| r.expect("runs"))
        .collect()
}

#[test]
fn concurrent_requests_within_the_delay_run_as_one_batch() {
    let s = cpu_scheduler(64, Duration::from_millis(300));
    let m = model(0.0);
    let reqs = (0..8).map(|i| request(&m, row(i), 0)).collect();
    let out = block_on(run_all(&s, reqs));
    assert_eq!(s.stats().batches_run, 1, "{:?}", s.stats());
    for (i, inf) in out.iter().enumerate() {
        assert_eq!(
            (inf.rows, inf.cols, inf.batch_rows, inf.batch_id),
            (1, 2, 8, 0)
        );
        assert_eq!(inf.device, Device::Cpu);
        // Each request gets its own row back, equal to running it alone.
        assert_eq!(inf.outputs, m.forward_cpu(&row(i), 1).expect("alone"));
    }
}

#[test]
fn requests_queued_while_busy_batch_without_a_delay() {
    let s = cpu_scheduler(64, Duration::ZERO);
    let m = model(0.0);
    s.hold();
    let tickets: Vec<_> = (0..5)
        .map(|i| s.submit(request(&m, row(i), 0)).expect("queued"))
        .collect();
    assert_eq!(s.queue_depth(), 5);
    s.release();
    let out: Vec<_> = block_on(join_all(tickets))
        .into_iter()
        .map(|r| r.expect("runs"))
        .collect();
    assert_eq!(s.stats().batches_run, 1);
    assert!(out.iter().all(|o| o.batch_rows == 5));
    assert_eq!(s.queue_depth(), 0);
}

#[test]
fn different_models_never_share_a_batch() {
    let s = cpu_scheduler(64, Duration::ZERO);
    let (a, b) = (model(0.0), model(1.0));
    s.hold();
    let reqs: Vec<_> = (0..6)
        .map(|i| request(if i % 2 == 0 { &a } else { &b }, row(i), 0))
        .collect();
    let tickets: Vec<_> = reqs
        .into_iter()
        .map(|r| s.submit(r).expect("queued"))
        .collect();
    s.release();
    let out: Vec<_> = block_on(join_all(tickets))
        .into_iter()
        .map(|r| r.expect("runs"))
        .collect();
    assert_eq!(s.stats().batches_run, 2);
    let ids_a: Vec<u64> = out.iter().step_by(2).map(|o| o.batch_id).collect();
    let ids_b: Vec<u64> = out.iter().skip(1).step_by(2).map(|o| o.batch_id).collect();
    assert!(ids_a.iter().all(|&x| x == ids_a[0]) && ids_b.iter().all(|&x| x == ids_b[0]));
    assert_ne!(ids_a[0], ids_b[0]);
    for (i, o) in out.iter().enumerate() {
        let m = if i % 2 == 0 { &a } else { &b };
        assert_eq!(o.outputs, m.forward_cpu(&row(i), 1).expect("alone"));
        assert_eq!(o.batch_rows, 3);
    }
}

#[test]
fn max_batch_size_is_respected() {
    let s = cpu_scheduler(4, Duration::ZERO);
    let m = model(0.0);
    s.hold();
    let tickets: Vec<_> = (0..10)
        .map(|i| s.submit(request(&m, row(i), 0)).expect("queued"))
        .collect();
    s.release();
    let out: Vec<_> = block_on(join_all(tickets))
        .into_iter()
        .map(|r| r.expect("runs"))
        .collect();
    assert_eq!(s.stats().batches_run, 3);
    let mut sizes: Vec<usize> = out.iter().map(|o| o.batch_rows).collect();
    sizes.dedup();
    assert_eq!(sizes, vec![4, 2], "batches of 4, 4, 2 in order");

    // One request larger than the batch size runs in chunks and keeps its rows in order.
    let before = s.stats().batches_run;
    let inputs: Vec<f32> = (0..10).flat_map(row).collect();
    let big = Request {
        inputs: Arc::from(inputs.clone()),
        rows: 10,
        ..request(&m, row(0), 0)
    };
    let r = block_on(s.submit(big).expect("queued")).expect("runs");
    assert_eq!(s.stats().batches_run - before, 3);
    assert_eq!(r.batch_rows, 4);
    assert_eq!(r.outputs, m.forward_cpu(&inputs, 10).expect("alone"));
}

#[test]
fn queue_runs_in_priority_order() {
    let s = cpu_scheduler(1, Duration::ZERO);
    let ms: Vec<_> = (0..4).map(|i| model(i as f32)).collect();
    s.hold();
    // (model, priority): distinct models, so each is its own batch.
    let plan = [(0, 1), (1, 5), (2, 3), (3, 5), (0, 9)];
    let tickets: Vec<_> = plan
        .iter()
        .map(|&(m, p)| s.submit(request(&ms[m], row(m), p)).expect("queued"))
        .collect();
    s.release();
    let out: Vec<_> = block_on(join_all(tickets))
        .into_iter()
        .map(|r| r.expect("runs"))
        .collect();
    let order: Vec<u64> = out.iter().map(|o| o.batch_id).collect();
    // priority 9 first, then the two 5s in arrival order, then 3, then 1.
    assert_eq!(order, vec![4, 1, 3, 2, 0]);
}

#[test]
fn host_model_cache_evicts_least_recently_used_by_bytes() {
    let m = model(0.0);
    let per_model = m.weight_bytes();
    let s = Scheduler::start(SchedulerConfig {
        host_cache_budget: per_model * 2 + per_model / 2,
        ..SchedulerConfig::default()
    })
    .expect("starts");
    let key = |n: &str| ModelKey {
        path: n.into(),
        modified: None,
        len: per_model,
    };
    let fresh = |salt| Arc::try_unwrap(model(salt)).expect("sole owner");
    s.cache_model(key("a"), fresh(0.0));
    s.cache_model(key("b"), fresh(1.0));
    assert!(
        s.cached_model(&key("a")).is_some(),
        "touch a: b is now the oldest"
    );
    s.cache_model(key("c"), fresh(2.0));
    assert!(s.is_cached(&key("a")) && s.is_cached(&key("c")));
    assert!(!s.is_cached(&key("b")));
    let st = s.stats();
    assert_eq!(
        (
            st.model_loads,
            st.model_evictions,
            st.models_cached,
            st.model_cache_hits
        ),
        (3, 1, 2, 1)
    );
    assert!(st.model_cache_bytes <= per_model * 2);
    // A changed file (size or mtime) is another key.
    assert!(s
        .cached_model(&ModelKey {
            len: per_model + 1,
            ..key("a")
        })
        .is_none());
}

#[test]
fn no_driver_means_zero_devices_and_the_cpu_fallback() {
    if beamline_gpu::driver_present() {
        eprintln!("libcuda is present here: the no-driver path is not reachable");
        return;
    }
    let s = Scheduler::start(SchedulerConfig {
        gpu_slots: 4,
        ..SchedulerConfig::default()
    })
    .expect("starts, no panic");
    assert!(s.devices().is_empty());
    assert!(!s.has_cuda());
    assert!(
        s.cpu_fallback_reason().contains("libcuda"),
        "{}",
        s.cpu_fallback_reason()
    );
    let m = model(0.0);
    let out = block_on(s.submit(request(&m, row(1), 0)).expect("auto is accepted")).expect("runs");
    assert_eq!(out.device, Device::Cpu);
    assert_eq!(out.device.to_string(), "cpu");
    let e = s
        .submit(Request {
            device: DevicePref::Cuda,
            ..request(&m, row(1), 0)
        })
        .expect_err("no CUDA");
    assert_eq!(e.kind(), ErrorKind::NoDevice);
    assert!(e.message.contains("no CUDA device"), "{e}");
}

#[test]
fn pool_disabled_is_said_so() {
    let s = Scheduler::start(SchedulerConfig::default()).expect("starts");
    assert!(s.devices().is_empty());
    assert!(s.cpu_fallback_reason().contains("--gpu-pool-size 0"));
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let s = cpu_scheduler(8, Duration::ZERO);
    let m = model(0.0);
    let wrong_width = Request {
        inputs: Arc::from(vec![1.0f32; 4]),
        ..request(&m, row(0), 0)
    };
    assert_eq!(
        s.submit(wrong_width).expect_err("width").kind(),
        ErrorKind::InvalidInput
    );
    let nan = request(&m, [1.0, f32::NAN, 0.0], 0);
    let e = s.submit(nan).expect_err("nan");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message.contains("row 0, column 1"), "{e}");
    let none = Request {
        inputs: Arc::from(Vec::<f32>::new()),
        rows: 0,
        ..request(&m, row(0), 0)
    };
    assert_eq!(
        s.submit(none).expect_err("empty").kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn overflow_to_infinity_is_an_error_not_a_null() {
    let s = cpu_scheduler(8, Duration::ZERO);
    let m = Arc::new(
        Model::new(vec![Layer::new(
            1,
            1,
            vec![1e30],
            vec![0.0],
            Activation::None,
        )
        .expect("layer")])
        .expect("model"),
    );
    let req = Request {
        model: m,
        inputs: Arc::from(vec![1e20f32]),
        rows: 1,
        device: DevicePref::Cpu,
        priority: 0,
        deadline: None,
    };
    let e = block_on(s.submit(req).expect("queued")).expect_err("overflow");
    assert_eq!(e.kind(), ErrorKind::NonFinite);
}

#[test]
fn deadline_and_cancel_while_queued() {
    let s = cpu_scheduler(8, Duration::ZERO);
    let m = model(0.0);
    s.hold();
    let late = s
        .submit(Request {
            deadline: Some(Instant::now() + Duration::from_millis(5)),
            ..request(&m, row(0), 0)
        })
        .expect("queued");
    let dropped = s.submit(request(&m, row(1), 0)).expect("queued");
    drop(dropped);
    std::thread::sleep(Duration::from_millis(20));
    s.release();
    assert_eq!(
        block_on(late).expect_err("deadline").kind(),
        ErrorKind::Deadline
    );
    let t0 = Instant::now();
    while s.queue_depth() > 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.stats().requests_run, 0, "neither ran");
}

#[test]
fn shutdown_answers_what_is_queued() {
    let s = cpu_scheduler(8, Duration::ZERO);
    let m = model(0.0);
    s.hold();
    let t = s.submit(request(&m, row(0), 0)).expect("queued");
    s.shutdown();
    assert_eq!(
        block_on(t).expect_err("shut down").kind(),
        ErrorKind::Shutdown
    );
    assert_eq!(
        s.submit(request(&m, row(0), 0))
            .expect_err("refused")
            .kind(),
        ErrorKind::Shutdown
    );
}

#[test]
fn parallel_cpu_path_equals_single_threaded() {
    // Big enough for the multi-threaded GEMM and activation passes.
    let (k, n, rows) = (256, 300, 64);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
        .collect();
    let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
    let m = Arc::new(
        Model::new(vec![
            Layer::new(k, n, w, b, Activation::Gelu).expect("layer")
        ])
        .expect("model"),
    );
    let x: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 31 % 97) as f32 / 97.0) - 0.5)
        .collect();
    let s = cpu_scheduler(64, Duration::ZERO);
    let req = Request {
        model: m.clone(),
        inputs: Arc::from(x.clone()),
        rows,
        device: DevicePref::Cpu,
        priority: 0,
        deadline: None,
    };
    let got = block_on(s.submit(req).expect("queued")).expect("runs");
    let want = m.forward_cpu(&x, rows).expect("runs");
    for (g, w) in got.outputs.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
    }
}

/// Runs only where a CUDA device is usable (never in CI): the GPU path agrees with the CPU
/// within `1e-4 + 1e-4·|cpu|` per value, weights are uploaded once, and a batch of
/// concurrent requests runs as one.
#[test]
fn gpu_agrees_with_cpu_when_a_device_is_present() {
    let s = Scheduler::start(SchedulerConfig {
        gpu_slots: 2,
        max_queue_delay: Duration::from_millis(50),
        ..SchedulerConfig::default()
    })
    .expect("starts");
    if s.devices().is_empty() {
        eprintln!("no CUDA device ({}): skipped", s.cpu_fallback_reason());
        return;
    }
    let m = model(0.5);
    let reqs: Vec<Request> = (0..16)
        .map(|i| Request {
            device: DevicePref::Cuda,
            ..request(&m, row(i), 0)
        })
        .collect();
    let out = block_on(run_all(&s, reqs));
    for (i, o) in out.iter().enumerate() {
        assert!(matches!(o.device, Device::Cuda(_)), "{:?}", o.device);
        let want = m.forward_cpu(&row(i), 1).expect("cpu");
        for (g, c) in o.outputs.iter().zip(&want) {
            assert!((g - c).abs() <= 1e-4 + 1e-4 * c.abs(), "{g} vs {c}");
        }
    }
    let st = s.stats();
    assert_eq!(st.device_uploads, 1, "{st:?}");
    assert_eq!(st.batches_run, 1, "{st:?}");
}
