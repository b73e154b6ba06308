//! Deployment: systemd readiness (`Type=notify`) against a real nats-server, and the
//! shipped unit's settings agreeing with the worker's (stop timeout over the drain grace).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beamline_testkit::prelude::{free_port, http_get, Nats};

/// Datagrams received on `sock` within `wait`.
fn receive(sock: &UnixDatagram, wait: Duration) -> Vec<String> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_only_once_nats_is_connected_and_health_is_green() {
    // The broker's port is known but nothing listens on it yet.
    let mut nats = Nats::start();
    nats.kill();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let (metrics, health) = (free_port(), free_port());
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the shell's.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_beamline_worker"))
        .arg(format!("--nats-url={}", nats.url()))
        .arg(format!("--fs-root={}", dir.path().join("fs").display()))
        .arg(format!("--sql-root={}", dir.path().join("sql").display()))
        .arg(format!("--prometheus-endpoint=127.0.0.1:{metrics}"))
        .arg(format!("--health-endpoint=127.0.0.1:{health}"))
        .args(["--cpu-pool-size=1", "--io-pool-size=1"])
        .env_remove("NATS_URL")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("worker.log")).expect("log"))
        .spawn()
        .expect("worker runs");
    let early = receive(&sock, Duration::from_secs(3));
    assert!(
        !early.iter().any(|m| m.contains("READY=1")),
        "READY before NATS was reachable: {early:?}"
    );
    nats.restart();
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < end && !seen.iter().any(|m: &String| m.contains("READY=1")) {
        seen.extend(receive(&sock, Duration::from_millis(200)));
    }
    let log = || std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    assert!(
        seen.iter().any(|m| m.contains("READY=1")),
        "no READY=1 after NATS came up: {seen:?}\n{}",
        log()
    );
    // Ready means healthy: /_health answers 200 at that point.
    let (status, _, body) = http_get(health, "/_health").await;
    assert_eq!(status, 200, "{body}");
    // Watchdog pings follow at WATCHDOG_USEC / 2.
    let after = receive(&sock, Duration::from_secs(2));
    assert!(
        after.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{after:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ops/systemd/beamline-worker.service"
    ))
    .expect("unit file")
}

fn setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

#[test]
fn unit_stop_timeout_outlasts_the_drain_grace_of_the_shipped_environment() {
    let unit = unit();
    let env = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ops/systemd/worker.env"
    ))
    .expect("env file");
    assert_eq!(setting(&unit, "Type").as_deref(), Some("notify"));
    assert_eq!(setting(&unit, "KillSignal").as_deref(), Some("SIGTERM"));
    assert_eq!(setting(&unit, "Restart").as_deref(), Some("on-failure"));
    let stop_s: u64 = setting(&unit, "TimeoutStopSec")
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    let grace_ms: u64 = setting(&env, "WORKER_SHUTDOWN_GRACE_MS")
        .and_then(|v| v.parse().ok())
        .expect("grace in the env file");
    assert!(
        stop_s * 1000 >= grace_ms + 10_000,
        "TimeoutStopSec {stop_s}s must outlast the grace {grace_ms} ms with room to flush"
    );
    for key in [
        "EnvironmentFile",
        "LimitMEMLOCK",
        "LimitNOFILE",
        "ProtectSystem",
        "NoNewPrivileges",
        "ReadWritePaths",
        "WatchdogSec",
    ] {
        assert!(setting(&unit, key).is_some(), "{key} missing");
    }
    // The writable paths are the roots the environment file gives the worker.
    let rw = setting(&unit, "ReadWritePaths").unwrap_or_default();
    for key in ["WORKER_FS_ROOT", "WORKER_SQL_ROOT"] {
        let root = setting(&env, key).expect("root in env file");
        assert!(
            rw.split_whitespace().any(|p| p == root),
            "{root} not in ReadWritePaths"
        );
    }
}

/// The drop-in for the shipped 16-core profile: its CPU and IO threads are left to the
/// kernel, so the unit keeps every core (not only the GPU slots' 14-15).
#[test]
fn systemd_dropin_leaves_the_profiles_unpinned_threads_every_core() {
    let out = Command::new(env!("CARGO_BIN_EXE_beamline_worker"))
        .args(["plan", "--systemd-dropin"])
        .arg(concat!(
            "--profile=",
            env!("CARGO_MANIFEST_DIR"),
            "/tuning/host-16c-1gpu.toml"
        ))
        .arg(concat!(
            "--sysfs-root=",
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sysfs/host-16c-1gpu"
        ))
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[Service]\nCPUAffinity=0-15"), "{text}");
}
