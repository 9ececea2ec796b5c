//! Jobs whose record was stored but whose `queued` event and work item
//! were not: a submit or RetryJob that NATS failed halfway through. Nothing
//! would ever run them, so they are ended as FAILED: at once by the call
//! that saw its writes fail, or, should that write fail too, by the sweep
//! once the record has sat unchanged for `RECORD_LAG` with no `queued`
//! event of its round. No work item will come back to send their `failed`
//! event again should it be lost, so the sweep does that too.

use reelmesh_nats::{
    EventKind, JobEvent, JobRecord, JobState, NatsError, Topology, record::RECORD_LAG,
};
use time::OffsetDateTime;

/// How the error of every job failed here begins: the sweep finds them by
/// it to make sure their `failed` event is stored.
const ERROR: &str = "the job could not be queued";

/// Ends `job` as FAILED, saying why (`cause`), if its record is still as
/// `job` shows it (QUEUED, same round, unchanged), and publishes `failed`.
/// `false` when the job moved on.
pub async fn fail(nats: &Topology, job: &JobRecord, cause: &str) -> Result<bool, NatsError> {
    let error = format!("{ERROR}: {cause}");
    let mut failed = false;
    let written = nats
        .jobs
        .modify(&job.tenant, &job.id, |record| {
            failed = record.state == JobState::Queued
                && record.round == job.round
                && record.updated_at == job.updated_at;
            if failed {
                record.fail(error.clone())?;
            }
            Ok(failed)
        })
        .await?;
    if failed {
        let event = JobEvent::of(&written.record, EventKind::Failed { error });
        nats.events.publish(&event).await?;
    }
    Ok(failed)
}

/// Fails `job`, as listed by the sweep, if it is one of these: QUEUED and
/// unchanged for `RECORD_LAG` with no `queued` event of its round. Of one
/// failed here before, sends the `failed` event again if it is not stored.
pub async fn sweep_one(nats: &Topology, job: &JobRecord) -> Result<bool, NatsError> {
    if job.state == JobState::Failed {
        confirm_failed(nats, job).await?;
        return Ok(false);
    }
    let quiet = OffsetDateTime::now_utc() - job.updated_at;
    if job.state != JobState::Queued || quiet < RECORD_LAG {
        return Ok(false);
    }
    if nats
        .events
        .holds(&JobEvent::of(job, EventKind::Queued))
        .await?
    {
        return Ok(false);
    }
    tracing::warn!(job = %job.id, tenant = %job.tenant, "failing a job that was never queued");
    fail(
        nats,
        job,
        "its queued event and work item were never stored",
    )
    .await
}

async fn confirm_failed(nats: &Topology, job: &JobRecord) -> Result<(), NatsError> {
    let Some(error) = job
        .error
        .as_deref()
        .filter(|error| error.starts_with(ERROR))
    else {
        return Ok(());
    };
    let error = error.to_owned();
    let failed = JobEvent::of(job, EventKind::Failed { error });
    if !nats.events.holds(&failed).await? {
        tracing::warn!(job = %job.id, "sending the lost failed event of a job never queued");
        nats.events.publish(&failed).await?;
    }
    Ok(())
}
