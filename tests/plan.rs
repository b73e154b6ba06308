//! `beamline_worker plan` against captured sysfs trees (tests/fixtures/sysfs/): the real
//! 2-vCPU VM, a 16-core one-GPU host (synthetic, and one captured on a device machine) and
//! a two-socket 64-core SMT host with 8 GPUs; the shipped host-class profiles; the
//! warnings; the start-up refusal of missing cores.

use std::path::Path;
use std::process::Command;

use beamline_testkit::fixtures::{fixture_path, repo_path};
use beamline_worker::config::{Cli, Profile};
use beamline_worker::plan::{plan_for, Plan};
use clap::Parser;

fn fixture(name: &str) -> String {
    fixture_path("sysfs").join(name).display().to_string()
}

fn profile(name: &str) -> String {
    repo_path("tuning").join(name).display().to_string()
}

fn plan(args: &[&str]) -> Result<Plan, String> {
    let mut v = vec!["beamline_worker"];
    v.extend_from_slice(args);
    plan_for(Cli::try_parse_from(v).map_err(|e| e.to_string())?)
}

/// The plan for the profile at `path` on the captured host `host`.
fn plan_profile(path: &str, host: &str) -> Result<Plan, String> {
    plan(&["--profile", path, "--sysfs-root", &fixture(host)])
}

fn cores(p: &Plan, pool: &str) -> Vec<Option<usize>> {
    p.threads
        .iter()
        .filter(|t| t.pool == pool)
        .map(|t| t.core)
        .collect()
}

fn write_profile(dir: &Path, text: &str) -> String {
    let path = dir.join("p.toml");
    std::fs::write(&path, text).expect("write profile");
    path.display().to_string()
}

#[test]
fn vm_defaults_spread_over_both_vcpus_and_warn_of_three_threads_on_two_cores() {
    let p = plan(&["--sysfs-root", &fixture("vm-2vcpu")]).expect("plans");
    assert_eq!(p.host.logical_cpus, 2);
    assert!(p.host.gpus.is_empty(), "virtio devices are not GPUs");
    assert_eq!(cores(&p, "cpu"), vec![Some(0), Some(1)]);
    assert_eq!(
        cores(&p, "io"),
        vec![Some(0)],
        "auto continues after the CPU pool"
    );
    assert_eq!(cores(&p, "transport"), vec![None]);
    assert_eq!(
        p.lanes.len(),
        3,
        "one lane per CPU thread plus the control connection"
    );
    assert_eq!(p.threads[0].l3_shared_with, "0-1");
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("3 pinned threads") && w.contains("2 cores")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn sixteen_core_profile_loads_and_plans_without_warning() {
    let path = profile("host-16c-1gpu.toml");
    let prof = Profile::load(Path::new(&path)).expect("loads");
    assert!(prof
        .hardware
        .as_deref()
        .is_some_and(|h| h.contains("measured on an H200 host")));
    let p = plan_profile(&path, "host-16c-1gpu").expect("plans");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.host.gpus.len(), 1);
    assert_eq!(p.host.gpus[0].pci, "0000:17:00.0");
    assert_the_measured_sixteen_core_shape(&p);
    assert!(p.gpu_slots.iter().all(|g| g.device == 0));
}

/// The shape bench/device/sweep-16c.sh measured best on the H200 host: six CPU threads and
/// two IO threads left to the kernel, the two GPU slots on the last two cores, and the
/// unit's affinity all sixteen cores (not the slots' two: the unpinned threads run there).
fn assert_the_measured_sixteen_core_shape(p: &Plan) {
    assert_eq!(cores(p, "cpu"), vec![None; 6]);
    assert_eq!(cores(p, "io"), vec![None; 2]);
    assert_eq!(cores(p, "gpu"), vec![Some(15), Some(14)]);
    assert_eq!(p.cpu_affinity, "0-15");
    assert_eq!(p.lanes.len(), 7, "one lane per CPU thread plus control");
}

/// A profile pinning some pools and not others: the systemd affinity is every allowed core,
/// since the unit's mask is all an unpinned thread can run on; pinning every pool keeps it
/// to the pinned cores.
#[test]
fn the_unit_affinity_leaves_unpinned_threads_every_allowed_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gpu_only = write_profile(
        dir.path(),
        "[pools]\ncpu_cores = \"none\"\nio_cores = \"none\"\ngpu_cores = [14, 15]\n\
         [worker]\ncpu_pool_size = 2\nio_pool_size = 1\ngpu_pool_size = 2\n",
    );
    let p = plan_profile(&gpu_only, "host-16c-1gpu").expect("plans");
    assert_eq!(cores(&p, "gpu"), vec![Some(14), Some(15)]);
    assert_eq!(p.cpu_affinity, "0-15");
    let all_pinned = write_profile(
        dir.path(),
        "[pools]\ncpu_cores = [0, 1]\nio_cores = [2]\ngpu_cores = [14, 15]\n\
         [worker]\ncpu_pool_size = 2\nio_pool_size = 1\ngpu_pool_size = 2\n",
    );
    let p = plan_profile(&all_pinned, "host-16c-1gpu").expect("plans");
    assert_eq!(p.cpu_affinity, "0-2,14-15");
}

/// The tree captured on a real device machine (bench/device/run.sh, 2026-11-28: a
/// Firecracker VM, 16 vCPUs, one H200 whose `numa_node` reads -1): the shipped profile plans
/// there as on the synthetic host, and the computed defaults warn of 26 threads on 16 cores.
#[test]
fn sixteen_core_profile_plans_on_the_captured_h200_host() {
    let p = plan_profile(&profile("host-16c-1gpu.toml"), "h200-16c-fc").expect("plans");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.host.logical_cpus, 16);
    assert_eq!(p.host.gpus.len(), 1, "one H200 among six PCI devices");
    assert_eq!(p.host.gpus[0].pci, "0000:00:06.0");
    assert_the_measured_sixteen_core_shape(&p);
    assert!(p.gpu_slots.iter().all(|g| g.device_numa_node.is_none()));
    let d = plan(&[
        "--sysfs-root",
        &fixture("h200-16c-fc"),
        "--gpu-pool-size",
        "2",
    ])
    .expect("plans");
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("26 pinned threads") && w.contains("16 cores")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn two_socket_profile_keeps_every_gpu_slot_on_its_devices_socket() {
    let path = profile("host-2s-64c-8gpu.toml");
    Profile::load(Path::new(&path)).expect("loads");
    let p = plan_profile(&path, "host-2s-64c-8gpu").expect("plans");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.host.logical_cpus, 128);
    assert_eq!(p.host.physical_cores, 64);
    assert_eq!(p.host.threads_per_core, 2);
    assert_eq!(p.host.gpus.len(), 8, "the NVSwitch bridge is not a GPU");
    assert_eq!(p.gpu_slots.len(), 8);
    for g in &p.gpu_slots {
        assert_eq!(g.core_numa_node, g.device_numa_node, "{g:?}");
        assert!(g.device_numa_node.is_some());
    }
    // One pool thread per physical core: no two threads on SMT siblings.
    let used: Vec<usize> = p.threads.iter().filter_map(|t| t.core).collect();
    assert_eq!(used.len(), 64);
    assert!(
        used.iter().all(|c| *c < 64),
        "only first SMT threads: {used:?}"
    );
}

#[test]
fn gpu_auto_placement_uses_the_devices_numa_node() {
    let p = plan(&[
        "--sysfs-root",
        &fixture("host-2s-64c-8gpu"),
        "--gpu-pool-size",
        "8",
    ])
    .expect("plans");
    assert_eq!(p.gpu_slots.len(), 8);
    for g in &p.gpu_slots {
        assert_eq!(g.core_numa_node, g.device_numa_node, "{g:?}");
    }
    assert!(
        !p.warnings.iter().any(|w| w.contains("NUMA")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn each_regrettable_placement_is_warned() {
    let dir = tempfile::tempdir().expect("tempdir");
    // IO ring on the SMT sibling of CPU thread 0; GPU slot 0 (device on node 0) on a
    // node-1 core; CPU and IO pools both on core 1 while 120+ cores idle.
    let path = write_profile(
        dir.path(),
        "[host]\nlogical_cpus = 16\n[pools]\ncpu_cores = [0, 1]\nio_cores = [64, 1]\ngpu_cores = [40]\n\
         [worker]\ncpu_pool_size = 2\nio_pool_size = 2\ngpu_pool_size = 1\n",
    );
    let p = plan_profile(&path, "host-2s-64c-8gpu").expect("plans");
    let has = |s: &str| p.warnings.iter().any(|w| w.contains(s));
    assert!(has("SMT sibling of CPU-pool core(s) 0"), "{:?}", p.warnings);
    assert!(has("two pools share core 1 (cpu+io)"), "{:?}", p.warnings);
    assert!(
        has("NUMA node 1) but its device 0000:18:00.0 is on NUMA node 0"),
        "{:?}",
        p.warnings
    );
    assert!(
        has("written for other hardware: 16 logical CPUs (this host: 128)"),
        "{:?}",
        p.warnings
    );
    // More threads than cores, and GPU slots with no GPU.
    let p = plan(&[
        "--sysfs-root",
        &fixture("vm-2vcpu"),
        "--cpu-pool-size",
        "4",
        "--gpu-pool-size",
        "1",
    ])
    .expect("plans");
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("5 pinned threads (cpu 4, io 1, gpu 0) for 2 cores")),
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings.iter().any(|w| w.contains("no NVIDIA GPU")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn a_profile_naming_a_missing_core_is_refused_by_plan_and_by_the_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_profile(dir.path(), "[pools]\ncpu_cores = [0, 200]\n");
    let err = plan_profile(&path, "host-16c-1gpu").expect_err("refused");
    assert!(err.contains("pools.cpu_cores names core 200"), "{err}");
    assert!(err.contains(&path), "the error names the profile: {err}");
    // The worker itself refuses it at start-up, before connecting anywhere.
    let out = Command::new(env!("CARGO_BIN_EXE_beamline_worker"))
        .args(["--profile", &path, "--nats-url", "nats://127.0.0.1:1"])
        .args(["--sysfs-root", &fixture("host-16c-1gpu")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names core 200"), "{stderr}");
}

#[test]
fn plan_subcommand_prints_a_table_and_json() {
    let bin = env!("CARGO_BIN_EXE_beamline_worker");
    let out = Command::new(bin)
        .args(["plan", "--profile", &profile("host-16c-1gpu.toml")])
        .args(["--sysfs-root", &fixture("host-16c-1gpu")])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "THREAD",
        "cpu-5",
        "beamline-io-1",
        "gpu-slot-1-dev0",
        "0000:17:00.0",
        "NATS LANES",
        "warnings: none",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    let out = Command::new(bin)
        .args([
            "plan",
            "--json",
            "--sysfs-root",
            &fixture("host-2s-64c-8gpu"),
        ])
        .args(["--gpu-pool-size", "8", "--consumer", "core"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["host"]["logical_cpus"], 128);
    assert_eq!(v["gpu_slots"].as_array().map(Vec::len), Some(8));
    assert_eq!(v["gpu_slots"][7]["pci"], "0000:db:00.0");
    assert!(v["lanes"][0]["carries"]
        .as_str()
        .is_some_and(|c| c.contains("queue subscription")));
    // The live host plans too (whatever it is), and a bad root is a clear error.
    let out = Command::new(bin)
        .args(["plan", "--json"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["plan", "--sysfs-root", "/nonexistent"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sysfs-root"));
}
