//! Micro-benchmark: N gets of a 1 KiB file through each backend, printing ops/s.
//!
//! ```text
//! cargo run --release -p beamline_io --example iobench -- [N] [CONCURRENCY] [THREADS] [pin]
//! ```
//! Defaults: N = 200000, CONCURRENCY = 64 requests in flight, THREADS = 2 IO threads, no
//! pinning (`pin` pins IO thread i to core i). One line per backend:
//! `iobench backend=io_uring threads=2 concurrency=64 ops=200000 secs=0.81 ops_per_sec=246000`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use beamline_io::{Backend, IoConfig, IoPool};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg(1, 200_000);
    let concurrency = arg(2, 64).max(1);
    let threads = arg(3, 2).max(1);
    let pin = std::env::args().any(|a| a == "pin");

    let dir = tempfile::tempdir()?;
    let root: PathBuf = dir.path().join("tenant");
    std::fs::create_dir(&root)?;
    std::fs::write(root.join("data.bin"), vec![0x5au8; 1024])?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    for backend in [Backend::Uring, Backend::Threads] {
        let cfg = IoConfig {
            threads,
            cores: if pin {
                (0..threads).collect()
            } else {
                Vec::new()
            },
            queue_capacity: 4096,
            ring_entries: 256,
            force_backend: Some(backend),
            max_file_bytes: 1 << 20,
        };
        let pool = match IoPool::start(cfg) {
            Ok(p) => p,
            Err(e) => {
                println!("iobench backend={} unavailable: {e}", backend.as_str());
                continue;
            }
        };
        let root = Arc::new(root.clone());
        let run = |count: usize| {
            let pool = pool.clone();
            let root = Arc::clone(&root);
            rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                let per = count / concurrency;
                let extra = count % concurrency;
                for w in 0..concurrency {
                    let pool = pool.clone();
                    let root = Arc::clone(&root);
                    let todo = per + usize::from(w < extra);
                    set.spawn(async move {
                        let mut errors = 0usize;
                        for _ in 0..todo {
                            match pool.get(&root, "data.bin").await {
                                Ok(d) if d.bytes.len() == 1024 => {}
                                _ => errors += 1,
                            }
                        }
                        errors
                    });
                }
                let mut errors = 0;
                while let Some(r) = set.join_next().await {
                    errors += r.unwrap_or(1);
                }
                errors
            })
        };
        run(n / 10 + 1); // warm-up
        let t = Instant::now();
        let errors = run(n);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "iobench backend={} threads={threads} concurrency={concurrency} ops={n} errors={errors} secs={secs:.3} ops_per_sec={:.0}",
            pool.backend().as_str(),
            n as f64 / secs
        );
    }
    Ok(())
}
