//! The tenant limit on queued plus running jobs, checked against a count
//! kept in memory so that a submit does not pay a round trip for it.
//!
//! The count is the work stream's (one message per queued or running job),
//! read again when it is older than [`REFRESH_EVERY`], plus every job this
//! gateway admitted since. Jobs ending only lower the true count, so the
//! estimate errs high, and a submit it would refuse is checked against a
//! fresh read first. A fresh read may miss this gateway's jobs that were
//! in flight when it was asked for, or admitted while it was on its way,
//! so those are added to it (any whose work item did land in time is then
//! counted twice until the next read: a refusal at the limit may come
//! early, never late). What it cannot see is other gateways' submits since
//! its last read, so with several gateways a tenant may overshoot by what
//! they admit within [`REFRESH_EVERY`].

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

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    /// When `active` was last read from the stream (`None`: never).
    read_at: Option<Instant>,
    /// The last read plus the jobs admitted since.
    active: u64,
    /// Jobs admitted whose writes are not known to be stored yet.
    in_flight: u64,
    /// Jobs admitted ever, to tell which came after a read was asked for.
    admitted: u64,
}

/// What this gateway had admitted when it asked for a fresh count.
#[derive(Debug, Clone, Copy)]
pub struct CountRead {
    admitted: u64,
    in_flight: u64,
}

/// One admitted job, counted in flight until dropped (once its writes are
/// stored, or failed).
#[derive(Debug)]
pub struct Admitted<'a> {
    counts: &'a TenantCounts,
    tenant: TenantId,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.counts.lock().get_mut(&self.tenant) {
            count.in_flight = count.in_flight.saturating_sub(1);
        }
    }
}

impl TenantCounts {
    /// Admits one more job if the estimate is recent and leaves room under
    /// `limit`; `None` means a fresh count is needed to decide.
    pub fn try_admit(&self, tenant: &TenantId, limit: u64) -> Option<Admitted<'_>> {
        let mut counts = self.lock();
        let count = counts.get_mut(tenant)?;
        let fresh = count.read_at.is_some_and(|at| at.elapsed() < REFRESH_EVERY);
        (fresh && count.active < limit).then(|| self.admit(count, tenant))
    }

    /// To call just before asking the stream for a tenant's count.
    pub fn reading(&self, tenant: &TenantId) -> CountRead {
        let counts = self.lock();
        let count = counts.get(tenant).copied().unwrap_or_default();
        CountRead {
            admitted: count.admitted,
            in_flight: count.in_flight,
        }
    }

    /// Decides on `read`, the count the stream answered to `asked`, plus
    /// the jobs it may have missed (in flight when asked, or admitted
    /// since), and remembers it. A refusal says how many jobs it counted.
    pub fn admit_on(
        &self,
        tenant: &TenantId,
        asked: CountRead,
        read: u64,
        limit: u64,
    ) -> Result<Admitted<'_>, u64> {
        let mut counts = self.lock();
        let count = counts.entry(tenant.clone()).or_default();
        count.read_at = Some(Instant::now());
        count.active = read + asked.in_flight + (count.admitted - asked.admitted);
        match count.active < limit {
            true => Ok(self.admit(count, tenant)),
            false => Err(count.active),
        }
    }

    fn admit(&self, count: &mut Count, tenant: &TenantId) -> Admitted<'_> {
        count.active += 1;
        count.in_flight += 1;
        count.admitted += 1;
        Admitted {
            counts: self,
            tenant: tenant.clone(),
        }
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
        let read = |read| counts.admit_on(&acme, counts.reading(&acme), read, 3);
        assert!(counts.try_admit(&acme, 3).is_none(), "nothing read yet");
        drop(read(1).expect("2 of 3"));
        drop(counts.try_admit(&acme, 3).expect("3 of 3"));
        let estimate = counts.try_admit(&acme, 3);
        assert!(estimate.is_none(), "4 of 3 by the estimate");
        assert_eq!(read(3).err(), Some(3), "a fresh count");
        assert!(read(0).is_ok(), "jobs ended meanwhile");
        assert!(
            counts.try_admit(&tenant("other"), 3).is_none(),
            "per tenant"
        );
    }

    #[test]
    fn submits_reading_the_same_count_at_once_share_the_room_it_leaves() {
        let counts = TenantCounts::default();
        let acme = tenant("acme");
        // Three submits ask at once and all read 1 of 3.
        let asked = [(); 3].map(|()| counts.reading(&acme));
        let first = counts.admit_on(&acme, asked[0], 1, 3).expect("2 of 3");
        let second = counts.admit_on(&acme, asked[1], 1, 3).expect("3 of 3");
        assert_eq!(counts.admit_on(&acme, asked[2], 1, 3).err(), Some(3));
        // Stored since: a read asked for now counts them itself.
        drop((first, second));
        let now = counts.reading(&acme);
        assert!(counts.admit_on(&acme, now, 3, 3).is_err());
        assert!(counts.admit_on(&acme, counts.reading(&acme), 2, 3).is_ok());
    }

    #[test]
    fn a_read_answered_late_still_counts_the_jobs_admitted_meanwhile() {
        let counts = TenantCounts::default();
        let acme = tenant("acme");
        let slow = counts.reading(&acme);
        // Two jobs are admitted and stored while the slow read is on its
        // way; it was served before their work items landed.
        let quick = counts.reading(&acme);
        drop(counts.admit_on(&acme, quick, 0, 3).expect("1 of 3"));
        drop(counts.try_admit(&acme, 3).expect("2 of 3"));
        assert!(counts.admit_on(&acme, slow, 0, 3).is_ok(), "3 of 3");
        assert!(counts.try_admit(&acme, 3).is_none(), "not 1 of 3");
    }
}
