//! The tenant limit on queued plus running jobs, checked against a count
//! kept in memory so that a submit does not pay a round trip for it.
//!
//! The count is the work stream's (one message per queued or running job),
//! read again when it is older than [`REFRESH_EVERY`], plus every job this
//! gateway admitted since. Jobs ending only lower the true count, so the
//! estimate errs high, and a submit it would refuse is checked against a
//! fresh read first: every refusal is exact. What it cannot see is other
//! gateways' submits since its last read, so with several gateways a tenant
//! may overshoot by what they admit within [`REFRESH_EVERY`] (a per-submit
//! read raced with concurrent submits just the same, only less often).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use reelmesh_nats::TenantId;

/// How long a count read from the work stream is trusted.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct TenantCounts {
    counts: Mutex<HashMap<TenantId, Count>>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    read_at: Instant,
    active: u64,
}

impl TenantCounts {
    /// Admits one more job if the estimate is recent and leaves room under
    /// `limit`; `false` means a fresh count is needed to decide.
    pub fn try_admit(&self, tenant: &TenantId, limit: u64) -> bool {
        let mut counts = self.lock();
        match counts.get_mut(tenant) {
            Some(count) if count.read_at.elapsed() < REFRESH_EVERY && count.active < limit => {
                count.active += 1;
                true
            }
            _ => false,
        }
    }

    /// Decides on a count just read, `active`, and remembers it: admitted
    /// (and counted) while below `limit`.
    pub fn admit_on(&self, tenant: &TenantId, active: u64, limit: u64) -> bool {
        let admitted = active < limit;
        let count = Count {
            read_at: Instant::now(),
            active: active + u64::from(admitted),
        };
        self.lock().insert(tenant.clone(), count);
        admitted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Count>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("tenant")
    }

    #[test]
    fn admits_from_memory_until_the_limit_then_asks_for_a_count() {
        let counts = TenantCounts::default();
        let acme = tenant("acme");
        assert!(!counts.try_admit(&acme, 3), "nothing read yet");
        assert!(counts.admit_on(&acme, 1, 3));
        assert!(counts.try_admit(&acme, 3));
        assert!(!counts.try_admit(&acme, 3), "3 of 3 by the estimate");
        assert!(!counts.admit_on(&acme, 3, 3), "a fresh count refuses");
        assert!(counts.admit_on(&acme, 0, 3), "jobs ended meanwhile");
        assert!(!counts.try_admit(&tenant("other"), 3), "per tenant");
    }
}
