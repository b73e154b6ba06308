//! `beamline_worker`: parse the configuration, start telemetry, run until stopped.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    // First: no transparent huge pages for the allocator's arenas (faults that zero 2 MiB
    // at once on a CPU thread; `app::no_huge_pages`).
    beamline_worker::app::no_huge_pages();
    // `beamline_worker plan [FLAGS]`: the placement these flags give; starts nothing.
    if std::env::args_os().nth(1).is_some_and(|a| a == "plan") {
        return beamline_worker::plan::main(std::env::args_os().skip(2));
    }
    let cfg = match beamline_worker::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("beamline_worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let traces = beamline_worker::telemetry::trace::Traces::start(&cfg);
    let logs = beamline_worker::telemetry::logs::init(cfg.log_format, &traces);
    beamline_worker::plan::log_at_start(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("transport")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "starting the transport runtime failed");
            drop(logs);
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(beamline_worker::app::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Logged only: a plain line beside the JSON ones would break a reader of the log
        // stream (both go to stderr).
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            std::process::ExitCode::FAILURE
        }
    };
    // Flush queued spans (bounded) before the process goes.
    traces.shutdown();
    // Write out the queued log lines.
    drop(logs);
    code
}
