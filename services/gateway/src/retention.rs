//! The retention sweeper: ended jobs do not stay for ever. Their outputs
//! (with what failed attempts left in the job's output directory) are
//! deleted after `output_retention_secs`, and the job itself (record and
//! events) after `job_retention_secs`, both counted from when the job
//! ended. Queued and running jobs are not removed; the same pass fails
//! the queued ones that were never queued at all ([`crate::unqueued`]).
//!
//! Purging a removed job's record leaves a marker under its key; the sweep
//! removes those too, so a removed job leaves nothing behind.
//!
//! Every gateway runs one; sweeps are idempotent, so several gateways
//! sweeping at once only repeat each other's deletes.

use std::time::Duration;

use reelmesh_nats::{JobRecord, JobState, NatsError, Topology, outputs_dir};
use reelmesh_store::{KeyPrefix, MediaStore, ObjectKey, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{
    GatewayError, NatsJobs,
    unqueued::{self, Mended},
};

const DAY: u64 = 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Ended jobs (record and events) are removed this long after they end.
    pub job_retention_secs: u64,
    /// Their outputs are deleted this long after they end (at the latest
    /// with the job).
    pub output_retention_secs: u64,
    pub sweep_every_secs: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            job_retention_secs: 30 * DAY,
            output_retention_secs: 30 * DAY,
            sweep_every_secs: 3600.0,
        }
    }
}

/// What one sweep removed, or ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub outputs: usize,
    pub jobs: usize,
    /// Jobs failed because they were never queued ([`crate::unqueued`]).
    pub unqueued: usize,
    /// Jobs queued again because their work item was never stored (same).
    pub requeued: usize,
    /// Markers removed jobs left in the record bucket
    /// ([`reelmesh_nats::JobRecords::remove_purge_markers`]).
    pub markers: usize,
    /// Jobs left as they were for a fault of their own (logged).
    pub skipped: usize,
}

/// Sweeps now and then every `sweep_every_secs` until `shutdown`.
pub async fn sweep_until(
    jobs: NatsJobs,
    store: MediaStore,
    config: RetentionConfig,
    shutdown: CancellationToken,
) {
    let every = Duration::try_from_secs_f64(config.sweep_every_secs).unwrap_or(Duration::MAX);
    loop {
        match jobs.connect().await {
            Ok(nats) => match sweep(nats, &store, &config).await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::info!(
                        outputs = swept.outputs,
                        jobs = swept.jobs,
                        unqueued = swept.unqueued,
                        requeued = swept.requeued,
                        markers = swept.markers,
                        skipped = swept.skipped,
                        "retention sweep"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("retention sweep: {err}"),
            },
            Err(err) => tracing::debug!("retention sweep waits for NATS: {err}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass over every job. One job's trouble does not stop the pass for
/// all the others: it is logged and skipped (`Swept::skipped`). Only
/// NATS or the store being unavailable ends it; the next sweep goes on.
pub async fn sweep(
    nats: &Topology,
    store: &MediaStore,
    config: &RetentionConfig,
) -> Result<Swept, GatewayError> {
    let now = OffsetDateTime::now_utc();
    let mut swept = Swept::default();
    for job in nats.jobs.list_all().await? {
        match unqueued::sweep_one(nats, &job).await {
            Ok(Mended::Failed) => swept.unqueued += 1,
            Ok(Mended::Requeued) => swept.requeued += 1,
            Ok(Mended::Nothing) => {}
            Err(err) => tracing::warn!(job = %job.id, "cannot check a job for queueing: {err}"),
        }
        match sweep_ended(nats, store, config, now, &job).await {
            Ok(Some(Removed::Job)) => swept.jobs += 1,
            Ok(Some(Removed::Outputs)) => swept.outputs += 1,
            Ok(None) => {}
            Err(err @ GatewayError::Unavailable(_)) => return Err(err),
            Err(err) => {
                tracing::warn!(job = %job.id, "retention skips a job: {err}");
                swept.skipped += 1;
            }
        }
    }
    // This pass's removals included.
    swept.markers = nats.jobs.remove_purge_markers().await?;
    Ok(swept)
}

/// What the sweep removed of one job.
enum Removed {
    Job,
    Outputs,
}

/// Removes an ended job, or its outputs, once they are old enough.
async fn sweep_ended(
    nats: &Topology,
    store: &MediaStore,
    config: &RetentionConfig,
    now: OffsetDateTime,
    job: &JobRecord,
) -> Result<Option<Removed>, GatewayError> {
    if !job.state.is_terminal() {
        return Ok(None);
    }
    let age = Duration::try_from(now - job.updated_at).unwrap_or_default();
    if age >= Duration::from_secs(config.job_retention_secs) {
        let removed = remove_job(nats, store, job).await?;
        return Ok(removed.then_some(Removed::Job));
    }
    let outputs_due = age >= Duration::from_secs(config.output_retention_secs)
        && !job.output_expired
        && job.output.as_ref().is_some_and(|o| !o.keys.is_empty());
    if !outputs_due {
        return Ok(None);
    }
    delete_outputs(store, job).await?;
    mark_expired(nats, job).await?;
    Ok(Some(Removed::Outputs))
}

/// Removes an ended job: outputs, record, events. The record goes by
/// compare-and-set on the version just read, so a RetryJob since the
/// listing keeps its job (`false`); only FAILED jobs can be retried, and
/// they have no outputs, so deleting those first loses nothing. Events go
/// last: should that fail, they expire with the event stream's max age.
async fn remove_job(
    nats: &Topology,
    store: &MediaStore,
    listed: &JobRecord,
) -> Result<bool, GatewayError> {
    let Some(read) = nats.jobs.get(&listed.tenant, &listed.id).await? else {
        return Ok(false);
    };
    let job = &read.record;
    if !job.state.is_terminal() || job.updated_at != listed.updated_at {
        return Ok(false);
    }
    delete_outputs(store, job).await?;
    if !nats
        .jobs
        .purge_at(&job.tenant, &job.id, read.revision)
        .await?
    {
        return Ok(false);
    }
    if job.state == JobState::Failed {
        // With its record gone, no attempt can start to write there now.
        // Should the store fail here, nothing names what is left: logged.
        if let Err(err) = delete_attempts_dir(store, job).await {
            tracing::warn!(job = %job.id, "results of its unfinished attempts stay: {err}");
        }
    }
    nats.events.purge(&job.tenant, &job.id).await?;
    Ok(true)
}

/// Deletes what the job's attempts stored: the objects its output names,
/// then whatever attempts that never committed left in its directory
/// (a worker killed after its upload, or NATS failing it at the commit).
/// A FAILED job's directory waits for [`remove_job`]: a RetryJob may yet
/// start an attempt that writes there.
async fn delete_outputs(store: &MediaStore, job: &JobRecord) -> Result<(), GatewayError> {
    let keys = job.output.iter().flat_map(|output| &output.keys);
    for key in keys {
        let key = ObjectKey::parse(key).map_err(StoreError::from)?;
        store.delete(&job.tenant, &key).await?;
    }
    if job.state != JobState::Failed {
        delete_attempts_dir(store, job).await?;
    }
    Ok(())
}

async fn delete_attempts_dir(store: &MediaStore, job: &JobRecord) -> Result<(), GatewayError> {
    let dir = KeyPrefix::parse(&format!("{}/", outputs_dir(&job.id))).map_err(StoreError::from)?;
    let deleted = store.delete_under(&job.tenant, &dir).await?;
    if deleted > 0 {
        tracing::debug!(job = %job.id, deleted, "deleted the job's results");
    }
    Ok(())
}

async fn mark_expired(nats: &Topology, job: &JobRecord) -> Result<(), NatsError> {
    nats.jobs
        .modify(&job.tenant, &job.id, |record| {
            // A RetryJob since the listing made new outputs: leave them.
            let same = record.round == job.round && record.state.is_terminal();
            record.output_expired |= same;
            Ok(same)
        })
        .await?;
    Ok(())
}
