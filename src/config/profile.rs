//! Tuning profiles (`tuning/*.toml`): the settings measured best on one kind of host,
//! with core placement as data.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConsumerMode, FsBackend, LogFormat};

/// Where a pool's threads run: `"auto"` spreads over the online cores (pools after the
/// first start where the previous one ended), a list pins thread i to `cores[i % len]`,
/// `"none"` leaves placement to the kernel.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Placement {
    #[default]
    #[serde(skip)]
    Auto,
    Named(String),
    Cores(Vec<usize>),
}

impl Placement {
    /// Core ids for `threads` threads; `offset` is where `auto` starts counting; `online`
    /// the cores this process may use (`plan::allowed_cores`).
    pub fn resolve(
        &self,
        threads: usize,
        offset: usize,
        online: &[usize],
    ) -> Result<Vec<usize>, String> {
        let online = online.to_vec();
        match self {
            Placement::Auto => Ok(auto(&online, threads, offset)),
            Placement::Named(n) if n == "auto" => Ok(auto(&online, threads, offset)),
            Placement::Named(n) if n == "none" => Ok(Vec::new()),
            Placement::Named(n) => Err(format!(
                "placement {n:?}: expected \"auto\", \"none\" or a list of core ids"
            )),
            Placement::Cores(list) => {
                if let Some(bad) = list.iter().find(|c| !online.contains(c)) {
                    return Err(format!(
                        "names core {bad}, which this host does not have or does not allow \
                         (usable cores: {})",
                        crate::plan::format_list(&online)
                    ));
                }
                Ok(list.clone())
            }
        }
    }
}

fn auto(online: &[usize], threads: usize, offset: usize) -> Vec<usize> {
    if online.is_empty() {
        return Vec::new();
    }
    (0..threads)
        .map(|i| online[(offset + i) % online.len()])
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    #[serde(default)]
    pub cpu_cores: Placement,
    #[serde(default)]
    pub io_cores: Placement,
    /// GPU slot threads; `auto`: cores of each slot's device's NUMA node.
    #[serde(default)]
    pub gpu_cores: Placement,
}

/// Settings a profile may give; each one is also a flag of the same name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub cpu_pool_size: Option<usize>,
    pub gpu_pool_size: Option<usize>,
    pub io_pool_size: Option<usize>,
    pub max_memory_mb: Option<u64>,
    pub max_cpu_time_ms: Option<u64>,
    pub nats_url: Option<String>,
    pub prometheus_endpoint: Option<String>,
    pub health_endpoint: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub sandbox_mode: Option<bool>,
    pub fs_root: Option<PathBuf>,
    pub sql_root: Option<PathBuf>,
    pub consumer: Option<ConsumerMode>,
    pub worker_id: Option<String>,
    pub subject_prefix: Option<String>,
    pub default_timeout_ms: Option<u64>,
    pub queue_group: Option<String>,
    pub js_stream: Option<String>,
    pub js_durable: Option<String>,
    pub js_output_stream: Option<String>,
    pub js_results_bucket: Option<String>,
    pub js_approval_stream: Option<String>,
    pub js_create: Option<bool>,
    pub js_replicas: Option<usize>,
    pub dedupe_ttl_s: Option<u64>,
    pub js_ack_wait_ms: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub fs_backend: Option<FsBackend>,
    pub fs_max_bytes: Option<u64>,
    pub http_ca_file: Option<PathBuf>,
    pub http_max_response_bytes: Option<usize>,
    pub http_deny_cidrs: Option<String>,
    pub http_allow_hosts: Option<String>,
    pub sql_max_rows: Option<usize>,
    pub sql_time_limit_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub tenant_max_in_flight: Option<usize>,
    pub tenant_rate_limit: Option<u32>,
    pub tenant_rate_burst: Option<u32>,
    pub gpu_max_batch_size: Option<usize>,
    pub gpu_max_queue_delay_us: Option<u64>,
    pub gpu_memory_budget_mb: Option<u64>,
}

/// A tuning profile file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: Option<String>,
    /// The hardware it was measured on, in words.
    pub hardware: Option<String>,
    #[serde(default)]
    pub pools: Pools,
    #[serde(default)]
    pub worker: WorkerSection,
    /// The host class it was written for; `plan` warns on other hardware.
    pub host: Option<crate::plan::HostClass>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_loads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("tuning/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let p = Profile::load(&path).expect("profile loads");
                assert!(
                    p.hardware.is_some(),
                    "{} must say what hardware it was measured on",
                    path.display()
                );
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn placement_auto_spreads_and_lists_are_checked() {
        assert_eq!(auto(&[0, 1], 3, 1), vec![1, 0, 1]);
        assert!(Placement::Cores(vec![9999]).resolve(1, 0, &[0, 1]).is_err());
        assert_eq!(
            Placement::Named("none".into()).resolve(4, 0, &[0, 1]),
            Ok(vec![])
        );
    }
}
