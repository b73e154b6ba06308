//! Tuning profiles (`tuning/*.toml`): the settings measured best on one kind of host,
//! with core placement as data. The `[worker]` keys are declared with the flags, in
//! `config/options.rs`.

use std::path::Path;

use serde::Deserialize;

use super::options::WorkerSection;
use crate::host::{format_list, HostClass};

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
    /// the cores this process may use (`host::allowed_cores`).
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
                        format_list(&online)
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
    pub host: Option<HostClass>,
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
