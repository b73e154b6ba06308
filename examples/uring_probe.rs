//! Exits 0 when this machine can run the IO pool's io_uring backend (the same probe
//! `IoPool::start` runs: a ring, every opcode the backend submits, one real
//! `IORING_OP_OPENAT2` with `RESOLVE_BENEATH`), 1 with the reason on stderr otherwise.
//! `.ci/run` uses it (through `scripts/require-uring.sh`) to set
//! `BEAMLINE_IO_REQUIRE_URING=1`, so that io_uring tests fail instead of skipping where
//! io_uring works.

fn main() {
    match beamline_io::probe_uring() {
        Ok(()) => println!("io_uring usable"),
        Err(e) => {
            eprintln!("io_uring unusable: {e}");
            std::process::exit(1);
        }
    }
}
