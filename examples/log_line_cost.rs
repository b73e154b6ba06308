//! The CPU cost of the per-step log line on the thread that logs, apart from everything
//! else a task does (issue 12): the worker's own log layer (`telemetry::logs::init_to`,
//! JSON, default filter) writing to a sink, and per iteration what the pipeline does for
//! one task: the `worker.assignment.receive` span with its fields, entered, the
//! "Step execution completed" line with the pipeline's fields (`logs::StepLine::log`, as
//! the pipeline logs it), the span dropped. Prints the thread's CPU time per iteration
//! (`CLOCK_THREAD_CPUTIME_ID`) for each of `ROUNDS` rounds of `PER_ROUND`, and the lines
//! the background writer dropped (must be 0).
//!
//!   cargo run --release --example log_line_cost

use std::time::Duration;

use beamline_worker::config::LogFormat;
use beamline_worker::telemetry::{logs, trace::Traces};

const ROUNDS: usize = 7;
const PER_ROUND: u32 = 100_000;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn one_task(i: u32) {
    let assignment_id = "a7f3c2e1-5b4d-4e8a-9c1f-2d3e4f5a6b7c";
    let span = tracing::info_span!(
        "worker.assignment.receive",
        tenant_id = "tenant-acme",
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
        run_id = "run-2026-11-28-0001",
        block_type = "fs.get",
        worker_id = "bench-worker",
        assignment_id = assignment_id
    );
    let _in = span.enter();
    logs::StepLine {
        success: true,
        tenant_id: Some("tenant-acme"),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        run_id: Some("run-2026-11-28-0001"),
        block_type: Some("fs.get"),
        worker_id: "bench-worker",
        assignment_id: Some(assignment_id),
        status: "success",
        latency_ms: u64::from(i % 7),
        attempts: 1,
        error: None,
        flow_id: Some("flow-ingest"),
        step_id: Some("step-read"),
    }
    .log();
}

fn main() {
    let traces = Traces::default();
    let guard = logs::init_to(LogFormat::Json, &traces, std::io::sink());
    for i in 0..PER_ROUND {
        one_task(i); // warm-up: the thread's buffers and the callsite caches
    }
    let mut per_line = Vec::new();
    for round in 0..ROUNDS {
        // Let the writer empty the queue (16 384 lines; it wakes every 5 ms).
        std::thread::sleep(Duration::from_millis(20));
        let t0 = thread_cpu();
        for i in 0..PER_ROUND {
            one_task(i);
            if i % 8_192 == 8_191 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let ns = (thread_cpu() - t0).as_nanos() as f64 / f64::from(PER_ROUND);
        println!("round {round}: {ns:.0} ns of CPU per task (span + line)");
        per_line.push(ns);
    }
    per_line.sort_by(f64::total_cmp);
    println!(
        "median {:.0} ns, min {:.0}, max {:.0}; lines dropped: {}",
        per_line[ROUNDS / 2],
        per_line[0],
        per_line[ROUNDS - 1],
        logs::dropped_lines()
    );
    drop(guard);
}
