//! Per-tenant quotas, both answered with 2004 QUOTA_EXCEEDED (not remembered for dedupe: a
//! later retry of the same assignment runs):
//! - concurrency: no tenant holds more than `--tenant-max-in-flight` assignments at once
//!   on this worker, so one tenant's flood cannot take every slot from the others;
//! - rate: no tenant starts more than `--tenant-rate-limit` assignments per second on this
//!   worker, with bursts of up to `--tenant-rate-burst` (a GCRA token bucket, `governor`).
//!
//! Both are per worker process: N instances admit N times as much.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;

use crate::contract::{ErrorCode, TaskError};

/// Rate checks between two sweeps of idle tenants out of the limiter's map.
const SWEEP_EVERY: u64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct Quotas {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<Box<str>, usize>>>,
    rate: Option<Arc<Rate>>,
}

/// The token buckets, one per tenant seen recently. Bounded: a tenant whose bucket is full
/// again is indistinguishable from a new one and is swept out every `SWEEP_EVERY` checks.
struct Rate {
    per_s: u32,
    burst: u32,
    limiter: governor::DefaultKeyedRateLimiter<Box<str>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rate")
            .field("per_s", &self.per_s)
            .field("burst", &self.burst)
            .field("tenants", &self.limiter.len())
            .finish()
    }
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
            rate: None,
        }
    }

    /// Adds a rate quota of `per_s` assignments per second per tenant with bursts of
    /// `burst` (0: one second's worth). `per_s` 0 means no rate quota.
    pub fn with_rate(mut self, per_s: u32, burst: u32) -> Quotas {
        self.rate = NonZeroU32::new(per_s).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Arc::new(Rate {
                per_s: rate.get(),
                burst: burst.get(),
                limiter: governor::RateLimiter::keyed(
                    governor::Quota::per_second(rate).allow_burst(burst),
                ),
                checks: AtomicU64::new(0),
            })
        });
        self
    }

    /// A slot for `tenant`, or the 2004 error saying which quota it is over. The
    /// concurrency slot is taken first so that a refused assignment costs no rate token.
    pub fn take(&self, tenant: &str) -> Result<Slot, TaskError> {
        let slot = self.take_in_flight(tenant).ok_or_else(|| {
            TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "tenant {tenant:?} already has {} assignments running on this worker",
                    self.limit
                ),
            )
        })?;
        if let Some(rate) = &self.rate {
            rate.check(tenant)?;
        }
        Ok(slot)
    }

    fn take_in_flight(&self, tenant: &str) -> Option<Slot> {
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

impl Rate {
    fn check(&self, tenant: &str) -> Result<(), TaskError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key: Box<str> = tenant.into();
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            // Rounded up: "retry in 0 ms" would read as "now".
            let wait_ms = wait.as_nanos().div_ceil(1_000_000);
            TaskError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "tenant {tenant:?} is over its rate quota of {} assignments per second \
                     (burst {}) on this worker; the next one is admitted in {wait_ms} ms",
                    self.per_s, self.burst
                ),
            )
            .with_retry_after(Some(Duration::from_millis(wait_ms as u64)))
        })
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
        let e = q.take("a").expect_err("3rd");
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(!e.retryable);
        assert!(q.take("b").is_ok());
        drop(a1);
        assert!(q.take("a").is_ok());
        assert!(Quotas::new(0).take("x").is_ok());
    }

    #[test]
    fn a_tenant_over_its_rate_is_refused_after_its_burst_and_others_are_not() {
        let q = Quotas::new(0).with_rate(1, 3);
        for _ in 0..3 {
            q.take("a").expect("within the burst");
        }
        let e = q.take("a").expect_err("over the burst");
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(!e.retryable, "2004 is never retried (CONTRACT.md)");
        assert!(
            e.message
                .contains("rate quota of 1 assignments per second (burst 3)"),
            "{}",
            e.message
        );
        let after = e.retry_after.expect("says when");
        assert!(
            after > Duration::ZERO && after <= Duration::from_secs(1),
            "{after:?}"
        );
        assert!(q.take("b").is_ok());
        // Burst 0 means one second's worth; rate 0 means no rate quota.
        let q = Quotas::new(0).with_rate(2, 0);
        assert!(q.take("a").is_ok() && q.take("a").is_ok());
        assert!(q.take("a").is_err());
        let q = Quotas::new(0).with_rate(0, 5);
        assert!((0..100).all(|_| q.take("a").is_ok()));
    }

    #[test]
    fn a_refusal_for_concurrency_costs_no_rate_token() {
        let q = Quotas::new(1).with_rate(1, 1);
        let held = q.take("a").expect("1st");
        assert!(q
            .take("a")
            .expect_err("in flight")
            .message
            .contains("running"));
        drop(held);
        // The one token went to the first; the second refusal is the rate's.
        assert!(q
            .take("a")
            .expect_err("rate")
            .message
            .contains("rate quota"));
    }
}
