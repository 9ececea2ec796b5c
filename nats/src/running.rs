//! Running slots: the tenant limit on jobs running at once, across every
//! render worker, kept as KV keys `<tenant>.<index>` (index below the
//! limit) that hold the id of the job running in them.
//!
//! A worker claims a slot before it begins an attempt: it reads the
//! tenant's slots, all at once, and writes its job's id into a free one at
//! the revision it read, which only one writer can win. When it is done
//! with the job it deletes the slot at the revision it wrote, so a worker
//! whose job was meanwhile given to another cannot free the other's slot.
//! A job whose work item came back after its worker stopped answering
//! re-takes the slot that names it. When every slot is held, the holders'
//! records tell whether one was left by a worker that died between its
//! steps ([`is_stale`]); such a slot is taken over the same way.
//!
//! The limit travels on each job's record (`JobRecord::running_limit`), so
//! every worker applies the one the gateway had at submit. After the limit
//! is lowered, jobs still running in slots above it are not counted against
//! it until they end.

use std::time::Duration;

use async_nats::jetstream::kv;
use time::OffsetDateTime;

use crate::{JobId, JobRecords, JobState, NatsError, TenantId, names};

/// How long a slot naming a QUEUED job is kept for it. A worker claims the
/// slot and only then begins the attempt (and, ending one for a retry,
/// queues the job before it releases), so for a moment a held slot names a
/// queued job; one older than this was left by a worker that died there.
pub const START_GRACE: Duration = Duration::from_secs(30);

/// Reads and writes lost to other workers before a claim gives up; its job
/// then waits as if the tenant were at its limit.
const CLAIM_ROUNDS: usize = 4;

/// The running-slot bucket.
#[derive(Debug, Clone)]
pub struct RunningSlots {
    kv: kv::Store,
    /// The holders' records, to tell a stale slot from a held one.
    jobs: JobRecords,
}

/// A slot claimed for one job, until released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSlot {
    pub tenant: TenantId,
    pub index: u32,
    /// What the claim wrote: the release deletes only this revision.
    revision: u64,
}

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Held(HeldSlot),
    /// Every slot is held by a job that runs: the job has to wait.
    Full,
}

/// One slot as read.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    index: u32,
    /// The revision a write must expect: 0 for a key never written.
    revision: u64,
    /// The job named in it and when that was written; `None` when free.
    holder: Option<(String, OffsetDateTime)>,
}

impl RunningSlots {
    pub(crate) fn new(kv: kv::Store, jobs: JobRecords) -> Self {
        RunningSlots { kv, jobs }
    }

    /// Claims one of the tenant's `limit` slots for `job`: the one naming
    /// it already, a free one, or a stale one.
    pub async fn claim(
        &self,
        tenant: &TenantId,
        job: &JobId,
        limit: u32,
    ) -> Result<Claim, NatsError> {
        for _ in 0..CLAIM_ROUNDS {
            let slots = self.read(tenant, limit).await?;
            let target = match choose(&slots, job) {
                Some(slot) => slot,
                None => match self.stale(tenant, &slots).await? {
                    Some(slot) => slot,
                    None => return Ok(Claim::Full),
                },
            };
            if let Some(held) = self.take(tenant, target, job).await? {
                return Ok(Claim::Held(held));
            }
        }
        Ok(Claim::Full)
    }

    /// Frees a slot unless it changed hands since the claim; `false` when
    /// it did (another worker re-took it for the same job, or took it over).
    pub async fn release(&self, held: &HeldSlot) -> Result<bool, NatsError> {
        let key = names::running_slot_key(&held.tenant, held.index);
        match self
            .kv
            .delete_expect_revision(key, Some(held.revision))
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }

    /// Slots `0..limit`, read concurrently: one round trip's wait.
    async fn read(&self, tenant: &TenantId, limit: u32) -> Result<Vec<Slot>, NatsError> {
        let reads = (0..limit).map(|index| async move {
            let key = names::running_slot_key(tenant, index);
            let entry = self.kv.entry(key).await.map_err(NatsError::unavailable)?;
            Ok::<_, NatsError>(slot_of(index, entry))
        });
        futures::future::try_join_all(reads).await
    }

    /// The first held slot whose job is not running any more.
    async fn stale<'a>(
        &self,
        tenant: &TenantId,
        slots: &'a [Slot],
    ) -> Result<Option<&'a Slot>, NatsError> {
        let states = slots.iter().map(|slot| self.holder_state(tenant, slot));
        let states = futures::future::try_join_all(states).await?;
        let now = OffsetDateTime::now_utc();
        let stale = slots.iter().zip(states).find(|(slot, state)| {
            let held_since = slot.holder.as_ref().map(|(_, since)| *since);
            held_since.is_some_and(|since| is_stale(*state, since, now))
        });
        Ok(stale.map(|(slot, _)| slot))
    }

    /// The state of the job a slot names; `None` when there is no such job.
    async fn holder_state(
        &self,
        tenant: &TenantId,
        slot: &Slot,
    ) -> Result<Option<JobState>, NatsError> {
        let Some(Ok(job)) = slot.holder.as_ref().map(|(job, _)| JobId::parse(job)) else {
            return Ok(None);
        };
        match self.jobs.get(tenant, &job).await {
            Ok(record) => Ok(record.map(|current| current.record.state)),
            // Most likely a later release's job, and running: its slot
            // is not for the taking, and this job waits as at any limit.
            Err(NatsError::Corrupt(_)) => Ok(Some(JobState::Running)),
            Err(err) => Err(err),
        }
    }

    /// Writes `job` into `slot` at the revision it was read at; `None` when
    /// another worker wrote it first.
    async fn take(
        &self,
        tenant: &TenantId,
        slot: &Slot,
        job: &JobId,
    ) -> Result<Option<HeldSlot>, NatsError> {
        let key = names::running_slot_key(tenant, slot.index);
        let value = job.as_str().to_owned().into();
        match self.kv.update(key, value, slot.revision).await {
            Ok(revision) => Ok(Some(HeldSlot {
                tenant: tenant.clone(),
                index: slot.index,
                revision,
            })),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(err) => Err(NatsError::unavailable(err)),
        }
    }
}

/// A slot from its KV entry: free when never written or deleted.
fn slot_of(index: u32, entry: Option<kv::Entry>) -> Slot {
    let Some(entry) = entry else {
        return Slot {
            index,
            revision: 0,
            holder: None,
        };
    };
    let holder = (entry.operation == kv::Operation::Put).then(|| {
        (
            String::from_utf8_lossy(&entry.value).into_owned(),
            entry.created,
        )
    });
    Slot {
        index,
        revision: entry.revision,
        holder,
    }
}

/// The slot `job` should write itself into: the one that names it already
/// (re-writing it makes an earlier worker's release of it fail), else a
/// free one, picked by the job's id so that jobs starting together try
/// different slots; `None` when all are held by other jobs.
fn choose<'a>(slots: &'a [Slot], job: &JobId) -> Option<&'a Slot> {
    let names_job = |slot: &&Slot| {
        let holder = slot.holder.as_ref();
        holder.is_some_and(|(holder, _)| holder == job.as_str())
    };
    if let Some(own) = slots.iter().find(names_job) {
        return Some(own);
    }
    let free: Vec<&Slot> = slots.iter().filter(|slot| slot.holder.is_none()).collect();
    (!free.is_empty()).then(|| free[spread(job, free.len())])
}

/// One of `0..among` picked by a job id's hash (FNV-1a), the same in every
/// worker.
fn spread(job: &JobId, among: usize) -> usize {
    let hash = job
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let among = u64::try_from(among).unwrap_or(u64::MAX).max(1);
    usize::try_from(hash % among).unwrap_or(0)
}

/// Whether a slot naming a job in `state` (`None`: no such job) since
/// `since` may be taken: the job is not running, and is not about to be.
fn is_stale(state: Option<JobState>, since: OffsetDateTime, now: OffsetDateTime) -> bool {
    match state {
        Some(JobState::Running) => false,
        Some(JobState::Queued) => now - since > START_GRACE,
        Some(JobState::Completed | JobState::Failed | JobState::Cancelled) | None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(index: u32, job: &JobId) -> Slot {
        Slot {
            index,
            revision: u64::from(index) + 10,
            holder: Some((job.to_string(), OffsetDateTime::now_utc())),
        }
    }

    fn free(index: u32) -> Slot {
        Slot {
            index,
            revision: 0,
            holder: None,
        }
    }

    #[test]
    fn a_job_takes_its_own_slot_before_a_free_one() {
        let (job, other) = (JobId::new(), JobId::new());
        let slots = [free(0), held(1, &other), held(2, &job)];
        assert_eq!(choose(&slots, &job).map(|slot| slot.index), Some(2));
        assert_eq!(choose(&slots, &other).map(|slot| slot.index), Some(1));
    }

    #[test]
    fn free_slots_are_shared_out_and_none_is_left_when_all_are_held() {
        let slots = [free(0), held(1, &JobId::new()), free(2)];
        let mut chosen: Vec<u32> = (0..64)
            .filter_map(|_| choose(&slots, &JobId::new()).map(|slot| slot.index))
            .collect();
        chosen.sort_unstable();
        chosen.dedup();
        assert_eq!(chosen, vec![0, 2], "both free slots, never the held one");
        let full = [held(0, &JobId::new()), held(1, &JobId::new())];
        assert_eq!(choose(&full, &JobId::new()), None);
        assert_eq!(
            choose(&[], &JobId::new()),
            None,
            "a limit of 0 has no slots"
        );
    }

    #[test]
    fn only_slots_of_jobs_that_are_not_running_are_stale() {
        let now = OffsetDateTime::now_utc();
        let young = now - time::Duration::seconds(1);
        let old = now - START_GRACE - time::Duration::seconds(1);
        assert!(!is_stale(Some(JobState::Running), old, now));
        for ended in [JobState::Completed, JobState::Failed, JobState::Cancelled] {
            assert!(is_stale(Some(ended), young, now), "{ended:?}");
        }
        assert!(is_stale(None, young, now), "the job is gone");
        assert!(
            !is_stale(Some(JobState::Queued), young, now),
            "about to begin"
        );
        assert!(
            is_stale(Some(JobState::Queued), old, now),
            "its worker died"
        );
    }

    #[test]
    fn deleted_and_missing_keys_are_free_slots() {
        let entry = |operation| kv::Entry {
            bucket: names::RUNNING_BUCKET.into(),
            key: "acme.0".into(),
            value: "job-1".into(),
            revision: 7,
            delta: 0,
            created: OffsetDateTime::now_utc(),
            operation,
            seen_current: true,
        };
        assert_eq!(slot_of(0, None), free(0));
        let deleted = slot_of(0, Some(entry(kv::Operation::Delete)));
        assert_eq!((deleted.revision, deleted.holder), (7, None));
        let put = slot_of(0, Some(entry(kv::Operation::Put)));
        assert_eq!(put.holder.map(|(job, _)| job), Some("job-1".into()));
    }
}
