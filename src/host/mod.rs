//! The host the worker runs on, as placement sees it: the topology read from sysfs
//! ([`topology`]), the cores this process may use, the GPU slot cores `auto` picks, and
//! the host class a profile names. A leaf: both `config` (placement) and `plan` (the
//! report) read it.

pub mod topology;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use topology::{format_list, parse_list, Topology};

/// The host class a profile was written for (`[host]` in a profile); the plan warns when
/// the host it runs on differs.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostClass {
    pub logical_cpus: Option<usize>,
    pub numa_nodes: Option<usize>,
    pub gpus: Option<usize>,
}

/// Where the worker's placement may pin threads: the online CPUs of the tree, and on the
/// live `/sys` only those the process may run on (`taskset`, the unit's `CPUAffinity`).
pub fn allowed_cores(topo: &Topology, live: bool) -> Vec<usize> {
    let online = topo.online();
    if !live {
        return online;
    }
    let mask: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let both: Vec<usize> = online
        .iter()
        .copied()
        .filter(|c| mask.contains(c))
        .collect();
    if both.is_empty() {
        online
    } else {
        both
    }
}

/// `auto` for GPU slot threads: slot i serves device `i % gpus` (the scheduler's spread)
/// and runs on an allowed core of that device's NUMA node, counted from the node's last
/// core down, so that the CPU pool (spread from the first core up) meets it last.
pub fn auto_gpu_cores(topo: &Topology, allowed: &[usize], slots: usize) -> Vec<usize> {
    if topo.gpus.is_empty() || allowed.is_empty() {
        return Vec::new();
    }
    let mut next: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    (0..slots)
        .map(|i| {
            let gpu = &topo.gpus[i % topo.gpus.len()];
            let mut local: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|c| {
                    gpu.numa_node.is_none()
                        || topo.cpu(*c).and_then(|x| x.numa_node) == gpu.numa_node
                })
                .collect();
            if local.is_empty() {
                local = allowed.to_vec();
            }
            let k = next.entry(gpu.numa_node).or_insert(0);
            let core = local[local.len() - 1 - (*k % local.len())];
            *k += 1;
            core
        })
        .collect()
}

/// The default sysfs root.
pub fn live_root() -> &'static Path {
    Path::new("/sys")
}
