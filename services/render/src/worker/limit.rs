//! The tenant limit on running jobs, on the worker's side. A job whose
//! record carries a limit gets a running slot (`reelmesh_nats::running`)
//! before its attempt begins, and gives it back once the worker is done
//! with the job. Without a slot the work item goes back to the queue to
//! wait: no attempt is counted, no event published, and it is offered
//! again after a pause that grows while it keeps waiting.
//!
//! A tenant found at its limit is remembered for a moment, so its jobs
//! that come by meanwhile go back without a round trip to NATS.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use reelmesh_nats::{Claim, HeldSlot, JobId, NatsError, TenantId, Topology};

/// How long a tenant found at its limit is taken to stay there, unless
/// this worker frees one of its slots first.
const FULL_FOR: Duration = Duration::from_millis(250);

/// A job waiting for a slot is offered again after this long, doubled with
/// each delivery of its work item up to [`WAIT_MAX`]: a freed slot is taken
/// within about that, while a long queue of waiting jobs costs each worker
/// a fetch and a nak per job every couple of seconds, not a stream of them.
const WAIT_FIRST: Duration = Duration::from_millis(50);
const WAIT_MAX: Duration = Duration::from_secs(2);

/// Tenants recently found with every slot taken.
#[derive(Debug, Default)]
pub(super) struct TenantsAtLimit {
    /// When each was found full, and at what limit.
    full: Mutex<HashMap<TenantId, (Instant, u32)>>,
}

impl TenantsAtLimit {
    /// A slot for `job` among its tenant's `limit`, or `None` when they
    /// are all held by running jobs. A job that `holds_one` already (as far
    /// as its record can tell) is not turned away on memory alone.
    pub(super) async fn claim(
        &self,
        topology: &Topology,
        tenant: &TenantId,
        job: &JobId,
        limit: u32,
        holds_one: bool,
    ) -> Result<Option<HeldSlot>, NatsError> {
        if !holds_one && self.known_full(tenant, limit) {
            return Ok(None);
        }
        match topology.running.claim(tenant, job, limit).await? {
            Claim::Held(slot) => Ok(Some(slot)),
            Claim::Full => {
                let mut full = self.lock();
                full.retain(|_, (at, _)| at.elapsed() < FULL_FOR);
                full.insert(tenant.clone(), (Instant::now(), limit));
                Ok(None)
            }
        }
    }

    /// Gives a slot back. A failure is logged, not returned: the slot
    /// names a job that is no longer running, so the next worker that finds
    /// the tenant full takes it over.
    pub(super) async fn release(&self, topology: &Topology, slot: HeldSlot) {
        self.lock().remove(&slot.tenant);
        match topology.running.release(&slot).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                slot = slot.index,
                "running slot was re-taken meanwhile: the job went to another worker"
            ),
            Err(err) => tracing::warn!(
                slot = slot.index,
                "could not release running slot (reclaimed once found stale): {err}"
            ),
        }
    }

    fn known_full(&self, tenant: &TenantId, limit: u32) -> bool {
        let full = self.lock();
        full.get(tenant)
            .is_some_and(|(at, full_at)| at.elapsed() < FULL_FOR && limit <= *full_at)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, (Instant, u32)>> {
        self.full.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a job of a tenant at its limit waits before it is offered
/// again, by how often its work item was delivered: [`WAIT_FIRST`] doubled
/// per delivery up to [`WAIT_MAX`], spread by ±20% so that jobs turned away
/// together do not come back together.
pub(super) fn wait(delivered: i64) -> Duration {
    let spread = 0.8 + 0.4 * rand::random::<f64>();
    unspread_wait(delivered).mul_f64(spread)
}

fn unspread_wait(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(0);
    WAIT_FIRST.saturating_mul(1 << doublings).min(WAIT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_jobs_come_back_sooner_first_then_every_couple_of_seconds() {
        assert_eq!(unspread_wait(1), WAIT_FIRST);
        assert_eq!(unspread_wait(2), WAIT_FIRST * 2);
        assert_eq!(unspread_wait(6), Duration::from_millis(1600));
        assert_eq!(unspread_wait(7), WAIT_MAX);
        assert_eq!(unspread_wait(i64::MAX), WAIT_MAX);
        assert_eq!(unspread_wait(0), WAIT_FIRST, "no delivery count");
        let wait = wait(1).as_secs_f64();
        assert!((0.04..=0.06).contains(&wait), "{wait}");
    }

    #[test]
    fn a_full_tenant_is_remembered_briefly_and_per_limit() {
        let tenants = TenantsAtLimit::default();
        let acme = TenantId::parse("acme").expect("tenant");
        tenants.lock().insert(acme.clone(), (Instant::now(), 2));
        assert!(tenants.known_full(&acme, 2));
        assert!(tenants.known_full(&acme, 1), "a lower limit is full too");
        assert!(!tenants.known_full(&acme, 3), "a higher one may not be");
        let other = TenantId::parse("other").expect("tenant");
        assert!(!tenants.known_full(&other, 2));
        let long_ago = Instant::now() - FULL_FOR;
        tenants.lock().insert(acme.clone(), (long_ago, 2));
        assert!(!tenants.known_full(&acme, 2), "forgotten after FULL_FOR");
    }
}
