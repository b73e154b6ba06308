//! The host as sysfs describes it: logical CPUs with their core, package, SMT siblings
//! and L3 group; NUMA nodes; NVIDIA GPUs on the PCI bus with their NUMA node. Read from
//! `/sys` or from a captured tree (`--sysfs-root`, `scripts/capture-sysfs.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One logical CPU (what `sched_setaffinity` and the profiles call a core).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    pub id: usize,
    pub package: usize,
    pub core_id: usize,
    pub numa_node: Option<usize>,
    /// Logical CPUs on the same physical core, itself included.
    pub smt_siblings: Vec<usize>,
    /// Logical CPUs sharing its last-level (L3) cache, itself included.
    pub l3: Vec<usize>,
}

/// An NVIDIA display or 3D controller (vendor 0x10de, PCI class 0x03xxxx).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gpu {
    /// CUDA ordinal under `CUDA_DEVICE_ORDER=PCI_BUS_ID` (the unit sets it): PCI order.
    pub ordinal: usize,
    pub pci: String,
    pub device_id: String,
    pub numa_node: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub root: PathBuf,
    /// Online logical CPUs, ascending.
    pub cpus: Vec<Cpu>,
    /// NUMA node → its online CPUs.
    pub nodes: BTreeMap<usize, Vec<usize>>,
    pub gpus: Vec<Gpu>,
}

/// Parses a kernel CPU list (`0-3,8,10-11`).
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CPU list entry");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if b < a || b - a > 1 << 16 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Writes a CPU list back in the kernel's compact form.
pub fn format_list(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        while i + 1 < ids.len() && ids[i + 1] == ids[i] + 1 {
            i += 1;
        }
        out.push(if ids[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", ids[i])
        });
        i += 1;
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join(",")
    }
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// NUMA node → its online CPUs.
fn read_nodes(root: &Path, online: &[usize]) -> BTreeMap<usize, Vec<usize>> {
    let mut nodes = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(root.join("devices/system/node")) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let list = read(root, &format!("devices/system/node/{name}/cpulist"))
                .and_then(|l| parse_list(&l).ok())
                .unwrap_or_default();
            let list: Vec<usize> = list.into_iter().filter(|c| online.contains(c)).collect();
            nodes.insert(id, list);
        }
    }
    nodes
}

/// One online CPU: its package, core, SMT siblings and L3 group.
fn read_cpu(root: &Path, id: usize, numa_node: Option<usize>) -> Cpu {
    let base = format!("devices/system/cpu/cpu{id}");
    let num =
        |f: &str| read(root, &format!("{base}/topology/{f}")).and_then(|v| v.parse::<usize>().ok());
    let smt_siblings = read(root, &format!("{base}/topology/thread_siblings_list"))
        .and_then(|l| parse_list(&l).ok())
        .unwrap_or_else(|| vec![id]);
    let mut l3 = vec![id];
    if let Ok(dir) = std::fs::read_dir(root.join(&base).join("cache")) {
        for entry in dir.flatten() {
            let idx = entry.file_name().to_string_lossy().into_owned();
            if !idx.starts_with("index") {
                continue;
            }
            if read(root, &format!("{base}/cache/{idx}/level")).as_deref() == Some("3") {
                if let Some(list) = read(root, &format!("{base}/cache/{idx}/shared_cpu_list"))
                    .and_then(|l| parse_list(&l).ok())
                {
                    l3 = list;
                }
            }
        }
    }
    Cpu {
        id,
        package: num("physical_package_id").unwrap_or(0),
        core_id: num("core_id").unwrap_or(id),
        numa_node,
        smt_siblings,
        l3,
    }
}

/// NVIDIA display/3D controllers on the PCI bus, in PCI order.
fn read_gpus(root: &Path) -> Vec<Gpu> {
    let mut gpus = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("bus/pci/devices")) {
        let mut addrs: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        addrs.sort();
        for pci in addrs {
            let f = |name: &str| read(root, &format!("bus/pci/devices/{pci}/{name}"));
            let nvidia = f("vendor").is_some_and(|v| v.eq_ignore_ascii_case("0x10de"));
            let display = f("class").is_some_and(|c| c.starts_with("0x03"));
            if nvidia && display {
                gpus.push(Gpu {
                    ordinal: gpus.len(),
                    device_id: f("device").unwrap_or_default(),
                    // -1: the firmware does not say (single-node hosts, most VMs).
                    numa_node: f("numa_node").and_then(|n| n.parse::<usize>().ok()),
                    pci,
                });
            }
        }
    }
    gpus
}

impl Topology {
    /// Reads the tree under `root` (normally `/sys`). Fails only when the CPU list itself
    /// is missing or malformed; absent details (cache, NUMA, PCI) read as unknown.
    pub fn read(root: &Path) -> Result<Topology, String> {
        let online_text = read(root, "devices/system/cpu/online").ok_or_else(|| {
            format!(
                "{}: no devices/system/cpu/online (not a sysfs tree)",
                root.display()
            )
        })?;
        let online = parse_list(&online_text)
            .map_err(|e| format!("{}/devices/system/cpu/online: {e}", root.display()))?;
        let nodes = read_nodes(root, &online);
        let node_of = |c: usize| {
            nodes
                .iter()
                .find(|(_, cpus)| cpus.contains(&c))
                .map(|(n, _)| *n)
        };
        let cpus = online
            .iter()
            .map(|&id| read_cpu(root, id, node_of(id)))
            .collect();
        Ok(Topology {
            root: root.to_path_buf(),
            cpus,
            gpus: read_gpus(root),
            nodes,
        })
    }

    pub fn cpu(&self, id: usize) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.id == id)
    }

    pub fn online(&self) -> Vec<usize> {
        self.cpus.iter().map(|c| c.id).collect()
    }

    /// Physical cores (distinct package/core pairs).
    pub fn physical_cores(&self) -> usize {
        let mut set: Vec<(usize, usize)> =
            self.cpus.iter().map(|c| (c.package, c.core_id)).collect();
        set.sort_unstable();
        set.dedup();
        set.len()
    }

    /// Distinct L3 groups, as CPU lists.
    pub fn l3_groups(&self) -> Vec<String> {
        let mut groups: Vec<Vec<usize>> = self.cpus.iter().map(|c| c.l3.clone()).collect();
        groups.sort();
        groups.dedup();
        groups.iter().map(|g| format_list(g)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(parse_list("0-3,8,10-11\n"), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(format_list(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("x").is_err());
        assert_eq!(format_list(&[]), "-");
    }
}
