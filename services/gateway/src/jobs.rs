//! The job API's logic, independent of gRPC: accept, read, list, cancel and
//! follow jobs, all through NATS.
//!
//! The rule that keeps jobs from being lost or ended twice: whoever moves a
//! record into a terminal state by compare-and-set publishes the terminal
//! event, and the event log drops a second terminal event for the same job
//! and round (a RetryJob starts a new round).

use futures::{Stream, StreamExt as _, future::BoxFuture, stream::BoxStream};
use std::{sync::Arc, time::Duration};

use tokio::sync::OnceCell;

use reelmesh_nats::{
    DEFAULT_MAX_ATTEMPTS, EventKind, JobEvent, JobId, JobRecord, JobState, NatsError, Pending,
    Priority, SequencedEvent, TenantId, Topology, TopologyConfig, WorkItem,
    record::{Versioned, may_still_arrive},
};
use reelmesh_proto::v1::JobSpec;

use crate::{
    GatewayError,
    capacity::{Admitted, TenantCounts},
    unqueued,
    validate::{JobLimits, check_idempotency_key, validate_spec},
};

/// How long a submit that lost an idempotency race waits for the winner's
/// job record to appear.
const CLAIMED_JOB_WAIT: Duration = Duration::from_secs(5);

/// How long after a job ends its terminal event may still be on its way
/// (sent again by a worker when the item comes back after its ack wait).
const ENDING_LAG: Duration = Duration::from_secs(600);

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// A page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// The id to continue after; `None` on the last page.
    pub next: Option<JobId>,
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub page_size: usize,
    pub after: Option<JobId>,
}

/// A SubmitJob request.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub spec: JobSpec,
    pub idempotency_key: Option<String>,
}

pub type EventStream = BoxStream<'static, Result<SequencedEvent, GatewayError>>;

/// What the Jobs gRPC service asks of the job logic.
pub trait JobsApi: Send + Sync + 'static {
    fn submit(
        &self,
        tenant: TenantId,
        submission: Submission,
    ) -> BoxFuture<'_, Result<JobRecord, GatewayError>>;
    fn get(&self, tenant: TenantId, id: JobId) -> BoxFuture<'_, Result<JobRecord, GatewayError>>;
    fn list(
        &self,
        tenant: TenantId,
        query: ListQuery,
    ) -> BoxFuture<'_, Result<JobPage, GatewayError>>;
    fn cancel(&self, tenant: TenantId, id: JobId)
    -> BoxFuture<'_, Result<JobRecord, GatewayError>>;
    /// The job's history after sequence `after`, then live events, ending
    /// after the terminal one.
    fn watch(
        &self,
        tenant: TenantId,
        id: JobId,
        after: u64,
    ) -> BoxFuture<'_, Result<EventStream, GatewayError>>;
    /// Queues a FAILED job again for a new round of attempts.
    fn retry(&self, tenant: TenantId, id: JobId) -> BoxFuture<'_, Result<JobRecord, GatewayError>>;
}

/// Why a submit's job was not created and queued.
#[derive(Debug)]
enum Created {
    /// No job will run: no record was stored, or the one stored could not
    /// be queued and was ended at once. The idempotency claim can be given
    /// up, so that a retry of the submit makes a job that runs.
    No(GatewayError),
    /// The record was stored but could not be queued, and is still to be
    /// ended (or was taken by a worker after all): the claim stays with it.
    NotQueued(GatewayError),
    /// NATS did not answer the create: the record (and its event and work
    /// item, sent after it) may yet be stored, so the claim stays with it.
    Unknown(GatewayError),
}

/// [`JobsApi`] on NATS JetStream.
///
/// The gateway starts and answers even while NATS is unreachable: calls
/// then fail with UNAVAILABLE, and the connection is made by whichever
/// call (or [`NatsJobs::connect`]) comes first once NATS is back. After
/// that the NATS client reconnects by itself through later outages.
#[derive(Debug, Clone)]
pub struct NatsJobs {
    topology: Arc<OnceCell<Topology>>,
    nats: Arc<(String, TopologyConfig)>,
    limits: JobLimits,
    active: Arc<TenantCounts>,
}

impl NatsJobs {
    /// Jobs on the NATS server at `url`, connected on first use.
    pub fn new(url: &str, config: TopologyConfig, limits: JobLimits) -> Self {
        NatsJobs {
            topology: Arc::default(),
            nats: Arc::new((url.to_string(), config)),
            limits,
            active: Arc::default(),
        }
    }

    /// Connects (and declares streams and buckets) unless already done.
    pub async fn connect(&self) -> Result<&Topology, GatewayError> {
        let (url, config) = &*self.nats;
        let topology = self
            .topology
            .get_or_try_init(|| Topology::connect_as(url, config, "reelmesh-gateway"))
            .await?;
        Ok(topology)
    }

    async fn submit_job(
        &self,
        tenant: TenantId,
        submission: Submission,
    ) -> Result<JobRecord, GatewayError> {
        let spec = validate_spec(submission.spec, &self.limits)?;
        let key = submission.idempotency_key;
        if let Some(key) = &key {
            check_idempotency_key(key)?;
        }
        let mut record = JobRecord::new(tenant, spec);
        record.max_attempts = match record.spec.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            n => n,
        };
        record.running_limit = self.limits.max_running_jobs_per_tenant;
        if let Some(key) = &key
            && let Some(existing) = self.claim_key(&record, key).await?
        {
            return Ok(existing);
        }
        let created = match self.check_capacity(&record.tenant).await {
            // Counted in flight until its writes are stored (or failed).
            Ok(_admitted) => self.create_and_enqueue(&record).await,
            Err(err) => Err(Created::No(err)),
        };
        match created {
            Ok(()) => {}
            Err(Created::No(err)) => {
                if let (Some(key), Ok(nats)) = (&key, self.connect().await) {
                    let _ = nats
                        .idempotency
                        .release(&record.tenant, key, &record.id)
                        .await;
                }
                return Err(err);
            }
            Err(Created::NotQueued(err) | Created::Unknown(err)) => return Err(err),
        }
        tracing::info!(job = %record.id, tenant = %record.tenant, "job queued");
        Ok(record)
    }

    /// Stores a new record and queues it in one round trip: the record, its
    /// queued event and its work item are sent back to back, then all three
    /// acks are awaited, so the caller hears back once all are durable.
    /// Each stream stores them in the order sent, so the queued event comes
    /// before anything a worker records, and a worker that reads the record
    /// before it is stored waits for it (see the render worker's start).
    async fn create_and_enqueue(&self, record: &JobRecord) -> Result<(), Created> {
        let nats = self.connect().await.map_err(Created::No)?;
        let create = nats.jobs.send_create(record).await;
        let create = create.map_err(|err| Created::No(err.into()))?;
        let (created, queued, work) = match self.send_enqueue(nats, record).await {
            Ok((queued, work)) => tokio::join!(create.durable(), queued.durable(), work.durable()),
            Err(err) => {
                let unsent = NatsError::Unavailable("not sent".into());
                (create.durable().await, Err(err), Err(unsent))
            }
        };
        match created {
            Ok(_) => {}
            // The record may land later, its work item after it: leave
            // both, so that a record that lands is a job that runs. A work
            // item whose record never comes is dropped by the worker once
            // the job's id is `RECORD_LAG` old.
            Err(err @ NatsError::NoAnswer(_)) => {
                return Err(Created::Unknown(GatewayError::Unavailable(format!(
                    "{err}; a submit with the same idempotency key returns the job if it was stored"
                ))));
            }
            Err(err) => {
                // No record: take the work item back so no worker waits.
                if let Ok(sequence) = work {
                    let _ = nats.work.withdraw(sequence).await;
                }
                return Err(Created::No(err.into()));
            }
        }
        if let Err(err) = queued.and(work) {
            return Err(match self.abandon(record, &err).await {
                true => Created::No(err.into()),
                false => Created::NotQueued(err.into()),
            });
        }
        Ok(())
    }

    /// Sends the queued event and then the work item of a record in QUEUED.
    async fn send_enqueue(
        &self,
        nats: &Topology,
        record: &JobRecord,
    ) -> Result<(Pending, Pending), NatsError> {
        let queued = JobEvent::of(record, EventKind::Queued);
        let item = WorkItem::of(record);
        let queued = nats.events.send(&queued).await?;
        let work = nats.work.send(&item, Priority::of(&record.spec)).await?;
        Ok((queued, work))
    }

    /// Publishes the queued event and the work item of a record just moved
    /// to QUEUED, both at once; if either fails, the job is ended rather
    /// than left queued with no work item.
    async fn enqueue(&self, record: &JobRecord) -> Result<(), GatewayError> {
        let nats = self.connect().await?;
        let enqueued = async {
            let (queued, work) = self.send_enqueue(nats, record).await?;
            let (queued, work) = futures::future::join(queued.durable(), work.durable()).await;
            queued.and(work)
        }
        .await;
        if let Err(err) = enqueued {
            self.abandon(record, &err).await;
            return Err(err.into());
        }
        Ok(())
    }

    /// Refuses a tenant's job beyond its limit of queued and running jobs.
    /// `None`: the tenant has no limit.
    async fn check_capacity(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Admitted<'_>>, GatewayError> {
        let limit = self.limits.max_active_jobs_per_tenant;
        if limit == 0 {
            return Ok(None);
        }
        if let Some(admitted) = self.active.try_admit(tenant, limit) {
            return Ok(Some(admitted));
        }
        let nats = self.connect().await?;
        let asked = self.active.reading(tenant);
        let active = nats.work.tenant_depth(tenant).await?;
        match self.active.admit_on(tenant, asked, active, limit) {
            Ok(admitted) => Ok(Some(admitted)),
            Err(counted) => Err(GatewayError::ResourceExhausted(format!(
                "tenant {tenant} already has {counted} jobs queued or running (limit {limit}); \
                 retry once some finish"
            ))),
        }
    }

    /// Claims the idempotency key for `record`'s job: `None` when it is
    /// ours, else the job that holds it. A claim on a job that was never
    /// stored (NATS stopped answering that submit's create) is taken over
    /// once the job is `RECORD_LAG` old, its record barred first so that a
    /// create still in flight cannot land after the key moved on.
    async fn claim_key(
        &self,
        record: &JobRecord,
        key: &str,
    ) -> Result<Option<JobRecord>, GatewayError> {
        let (tenant, nats) = (&record.tenant, self.connect().await?);
        // Each round that fails saw the claim change hands under it.
        for _ in 0..3 {
            let Some(holder) = nats.idempotency.claim(tenant, key, &record.id).await? else {
                return Ok(None);
            };
            if let Some(job) = self.claimed_job(tenant, &holder).await? {
                return Ok(Some(job));
            }
            // Should its record land just now, the next round finds it.
            if !nats.jobs.bar(tenant, &holder).await? {
                continue;
            }
            tracing::warn!(job = %holder, "taking over the idempotency key of a job never stored");
            if nats
                .idempotency
                .take_over(tenant, key, &holder, &record.id)
                .await?
            {
                return Ok(None);
            }
        }
        Err(GatewayError::Unavailable(format!(
            "the idempotency key {key:?} keeps changing hands; retry the submit"
        )))
    }

    /// The job another submit with the same idempotency key made. It may
    /// still be on its way into the bucket, so wait for it briefly. `None`
    /// when it is too old to be on its way: it was never stored.
    async fn claimed_job(
        &self,
        tenant: &TenantId,
        id: &JobId,
    ) -> Result<Option<JobRecord>, GatewayError> {
        let deadline = tokio::time::Instant::now() + CLAIMED_JOB_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(found) = self.connect().await?.jobs.get(tenant, id).await? {
                return Ok(Some(found.record));
            }
            if !may_still_arrive(id) {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GatewayError::Unavailable(format!(
                    "job {id} for this idempotency key is not stored yet; retry the submit"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The record exists but the job could not be queued: end it as FAILED
    /// so it does not sit in QUEUED forever, then report the outage. Should
    /// that fail too, it is tried again in the background (see
    /// [`crate::unqueued`]). `true` when it is ended now, by this call.
    async fn abandon(&self, record: &JobRecord, cause: &NatsError) -> bool {
        let Ok(nats) = self.connect().await else {
            return false;
        };
        let cause = cause.to_string();
        let err = match unqueued::fail(nats, record, &cause).await {
            Ok(ended) => return ended,
            Err(err) => err,
        };
        tracing::warn!(job = %record.id, "could not fail a job left unqueued, trying again: {err}");
        // The caller has its answer, that the job was not accepted, so it
        // must end: the sweep would queue it again should its `queued`
        // event have been stored.
        let (jobs, record) = (self.clone(), record.clone());
        tokio::spawn(async move {
            let Ok(nats) = jobs.connect().await else {
                return;
            };
            let on_error =
                |err: &NatsError| tracing::debug!(job = %record.id, "still failing: {err}");
            if let Err(err) = unqueued::fail_until_done(nats, &record, &cause, on_error).await {
                tracing::error!(job = %record.id, "gave up failing a job left unqueued: {err}");
            }
        });
        false
    }

    async fn get_job(&self, tenant: &TenantId, id: &JobId) -> Result<JobRecord, GatewayError> {
        Ok(self.read_job(tenant, id).await?.record)
    }

    /// The job's record and its revision, or NOT_FOUND.
    async fn read_job(&self, tenant: &TenantId, id: &JobId) -> Result<Versioned, GatewayError> {
        self.connect()
            .await?
            .jobs
            .get(tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(id.to_string()))
    }

    async fn list_jobs(&self, tenant: TenantId, query: ListQuery) -> Result<JobPage, GatewayError> {
        let mut jobs = self.connect().await?.jobs.list(&tenant).await?;
        jobs.retain(|job| query.state.is_none_or(|state| job.state == state));
        jobs.retain(|job| query.after.as_ref().is_none_or(|after| job.id < *after));
        // Ids are UUIDv7, so descending id order is newest first.
        jobs.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(paginate(jobs, query.page_size))
    }

    async fn cancel_job(&self, tenant: TenantId, id: JobId) -> Result<JobRecord, GatewayError> {
        let nats = self.connect().await?;
        let mut cancelled_from = None;
        let versioned = nats
            .jobs
            .modify(&tenant, &id, |job| {
                // Run again on a fresh read after a lost compare-and-set.
                cancelled_from = None;
                if job.state.is_terminal() {
                    return Ok(false);
                }
                cancelled_from = Some(job.state);
                job.cancel()?;
                Ok(true)
            })
            .await?;
        let Some(was) = cancelled_from else {
            if versioned.record.state == JobState::Cancelled {
                self.finish_cancel(nats, &versioned.record).await?;
            }
            return Ok(versioned.record);
        };
        // The round's `queued` event goes first if it is not stored yet: a
        // RetryJob whose compare-and-set landed may still be sending it, and
        // stored after `cancelled` it would show the round queued after it
        // ended. Stored here (stamped with the cancel's time), the retry's
        // copy, having the same message id, is dropped as a duplicate if it
        // arrives within the duplicate window (2 minutes). Best effort: the
        // record is already CANCELLED, and its terminal event matters more.
        if was == JobState::Queued {
            let queued = JobEvent::of(&versioned.record, EventKind::Queued);
            if let Err(err) = nats.events.publish_unless_stored(&queued).await {
                tracing::warn!(job = %id, "queued event not checked before cancelled: {err}");
            }
        }
        let event = JobEvent::of(&versioned.record, EventKind::Cancelled);
        nats.events.publish(&event).await?;
        tracing::info!(job = %id, %tenant, "job cancelled");
        // Only once the event is stored: until then the item is what makes a
        // worker send it. A running job's item is its worker's to ack.
        if was == JobState::Queued
            && let Err(err) = nats.work.withdraw_job(&tenant, &id).await
        {
            tracing::warn!(job = %id, "cancelled job left queued until a worker drops it: {err}");
        }
        Ok(versioned.record)
    }

    /// A CancelJob of a job already CANCELLED finishes what the call that
    /// cancelled it may not have: that call can have stopped (the gateway
    /// killed, NATS failing, the client told UNAVAILABLE and trying again)
    /// between the compare-and-set and the `cancelled` event, leaving
    /// watchers and webhooks waiting, or before taking the work item out,
    /// leaving it counted against the tenant until a worker reaches it.
    async fn finish_cancel(&self, nats: &Topology, record: &JobRecord) -> Result<(), GatewayError> {
        let event = JobEvent::of(record, EventKind::Cancelled);
        if !nats.events.holds(&event).await? {
            // Its round's `queued` first, as in a first cancel.
            let queued = JobEvent::of(record, EventKind::Queued);
            nats.events.publish_unless_stored(&queued).await?;
            nats.events.publish(&event).await?;
            tracing::warn!(job = %record.id, "sent the cancelled event a cancel left unsent");
        }
        // The event is stored, so no worker needs the item to send it.
        nats.work.withdraw_job(&record.tenant, &record.id).await?;
        Ok(())
    }

    async fn watch_job(
        &self,
        tenant: TenantId,
        id: JobId,
        after: u64,
    ) -> Result<EventStream, GatewayError> {
        let job = self.get_job(&tenant, &id).await?;
        let nats = self.connect().await?;
        if history_expired(nats, &job).await? {
            return Err(GatewayError::FailedPrecondition(format!(
                "job {id} ended ({:?}) and its terminal event is not stored (expired, or \
                 never sent); GetJob has its outcome",
                job.state
            )));
        }
        let round = job.round;
        let events = nats.events.follow(&tenant, &id, after).await?;
        let events = events
            .map(|event| event.map_err(GatewayError::from))
            .boxed();
        Ok(until_terminal(events, round).boxed())
    }

    async fn retry_job(&self, tenant: TenantId, id: JobId) -> Result<JobRecord, GatewayError> {
        // A retried job is active again: it counts against the limit. A job
        // that cannot be retried is told so first, not that the tenant is full.
        let read = self.read_job(&tenant, &id).await?;
        if read.record.state != JobState::Failed {
            return Err(not_retryable(&id, read.record.state));
        }
        let _admitted = self.check_capacity(&tenant).await?;
        let mut state = None;
        // On the version just read: a second read only if it moved since.
        let versioned = self
            .connect()
            .await?
            .jobs
            .modify_read(read, |job| {
                state = Some(job.state);
                if job.state != JobState::Failed {
                    return Ok(false);
                }
                job.requeue()?;
                Ok(true)
            })
            .await?;
        if state != Some(JobState::Failed) {
            return Err(not_retryable(&id, versioned.record.state));
        }
        self.enqueue(&versioned.record).await?;
        tracing::info!(job = %id, %tenant, round = versioned.record.round, "job requeued");
        Ok(versioned.record)
    }
}

fn not_retryable(id: &JobId, state: JobState) -> GatewayError {
    GatewayError::FailedPrecondition(format!(
        "job {id} is {state:?}; only FAILED jobs can be retried"
    ))
}

impl JobsApi for NatsJobs {
    fn submit(
        &self,
        tenant: TenantId,
        submission: Submission,
    ) -> BoxFuture<'_, Result<JobRecord, GatewayError>> {
        Box::pin(self.submit_job(tenant, submission))
    }

    fn get(&self, tenant: TenantId, id: JobId) -> BoxFuture<'_, Result<JobRecord, GatewayError>> {
        Box::pin(async move { self.get_job(&tenant, &id).await })
    }

    fn list(
        &self,
        tenant: TenantId,
        query: ListQuery,
    ) -> BoxFuture<'_, Result<JobPage, GatewayError>> {
        Box::pin(self.list_jobs(tenant, query))
    }

    fn cancel(
        &self,
        tenant: TenantId,
        id: JobId,
    ) -> BoxFuture<'_, Result<JobRecord, GatewayError>> {
        Box::pin(self.cancel_job(tenant, id))
    }

    fn watch(
        &self,
        tenant: TenantId,
        id: JobId,
        after: u64,
    ) -> BoxFuture<'_, Result<EventStream, GatewayError>> {
        Box::pin(self.watch_job(tenant, id, after))
    }

    fn retry(&self, tenant: TenantId, id: JobId) -> BoxFuture<'_, Result<JobRecord, GatewayError>> {
        Box::pin(self.retry_job(tenant, id))
    }
}

fn paginate(mut jobs: Vec<JobRecord>, page_size: usize) -> JobPage {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let next = (jobs.len() > size).then(|| jobs[size - 1].id.clone());
    jobs.truncate(size);
    JobPage { jobs, next }
}

/// Whether `job` ended long enough ago that its ending should be stored,
/// and the stream no longer holds it (events expire with the stream's max
/// age, which may be shorter than the jobs'): a watch would wait for ever.
async fn history_expired(nats: &Topology, job: &JobRecord) -> Result<bool, NatsError> {
    let Some(kind) = EventKind::ending(job) else {
        return Ok(false);
    };
    let ended = time::OffsetDateTime::now_utc() - job.updated_at;
    if ended < ENDING_LAG {
        return Ok(false);
    }
    Ok(!nats.events.holds(&JobEvent::of(job, kind)).await?)
}

/// Passes events through up to and including the first terminal one of
/// round `round` or later (earlier rounds' ends were undone by RetryJob),
/// or the first error, then ends without waiting for the source's next
/// item (a job's subject stays open after its terminal event).
fn until_terminal<S>(
    events: S,
    round: u32,
) -> impl Stream<Item = Result<SequencedEvent, GatewayError>>
where
    S: Stream<Item = Result<SequencedEvent, GatewayError>> + Send + Unpin + 'static,
{
    futures::stream::unfold((events, false), move |(mut events, finished)| async move {
        if finished {
            return None;
        }
        let event = events.next().await?;
        let terminal = match &event {
            Ok(sequenced) => sequenced.event.kind.is_terminal() && sequenced.event.round >= round,
            Err(_) => true,
        };
        Some((event, (events, terminal)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    fn event(sequence: u64, kind: EventKind) -> Result<SequencedEvent, GatewayError> {
        Ok(SequencedEvent {
            sequence,
            event: JobEvent::now(&tenant(), &JobId::new(), kind),
        })
    }

    #[tokio::test]
    async fn watch_stops_after_the_terminal_event() {
        let events = futures::stream::iter(vec![
            event(1, EventKind::Queued),
            event(2, EventKind::Started { attempt: 1 }),
            event(3, EventKind::Cancelled),
        ])
        // Like a live subject: nothing more ever arrives.
        .chain(futures::stream::pending());
        let seen: Vec<u64> = until_terminal(Box::pin(events), 0)
            .map(|event| event.expect("event").sequence)
            .collect()
            .await;
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn pages_are_bounded_and_point_at_the_last_id() {
        let jobs: Vec<JobRecord> = (0..7)
            .map(|_| JobRecord::new(tenant(), JobSpec::default()))
            .collect();
        let page = paginate(jobs.clone(), 5);
        assert_eq!(page.jobs.len(), 5);
        assert_eq!(page.next.as_ref(), Some(&jobs[4].id));
        let last = paginate(jobs[5..].to_vec(), 5);
        assert_eq!(last.jobs.len(), 2);
        assert!(last.next.is_none());
        assert_eq!(paginate(jobs, 0).jobs.len(), 7);
    }
}
