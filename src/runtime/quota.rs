//! Per-tenant concurrency quota: no tenant holds more than `--tenant-max-in-flight`
//! assignments at once on this worker, so one tenant's flood cannot take every slot from
//! the others. Over quota → 2004 QUOTA_EXCEEDED (not remembered for dedupe: a later retry
//! of the same assignment runs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Quotas {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<Box<str>, usize>>>,
}

/// Held while an assignment of the tenant runs.
#[derive(Debug)]
pub struct Slot {
    quotas: Quotas,
    tenant: Box<str>,
}

impl Quotas {
    /// `limit` 0 means unlimited.
    pub fn new(limit: usize) -> Quotas {
        Quotas {
            limit,
            in_flight: Arc::default(),
        }
    }

    /// A slot for `tenant`, or `None` when it is at its limit.
    pub fn take(&self, tenant: &str) -> Option<Slot> {
        if self.limit == 0 {
            return Some(Slot {
                quotas: self.clone(),
                tenant: "".into(),
            });
        }
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(tenant.into()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            quotas: self.clone(),
            tenant: tenant.into(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.quotas.limit == 0 {
            return;
        }
        let mut m = self
            .quotas
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_limit_is_refused_and_others_are_not() {
        let q = Quotas::new(2);
        let a1 = q.take("a").expect("1st");
        let _a2 = q.take("a").expect("2nd");
        assert!(q.take("a").is_none());
        assert!(q.take("b").is_some());
        drop(a1);
        assert!(q.take("a").is_some());
        assert!(Quotas::new(0).take("x").is_some());
    }
}
