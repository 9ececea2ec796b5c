//! Jobs whose record was stored but whose `queued` event or work item
//! was not: a submit or RetryJob that NATS failed halfway through. Nothing
//! would ever run them, so they are ended as FAILED: at once by the call
//! that saw its writes fail; should that write fail too, by the same
//! gateway trying again while NATS recovers ([`fail_until_done`]); and,
//! should that gateway stop first, by the sweep once the record has sat
//! unchanged for `RECORD_LAG` with no `queued` event of its round. No work
//! item will come back to send their `failed` event again should it be
//! lost, so the sweep does that too.
//!
//! A job whose `queued` event was stored but whose work item was not (the
//! gateway gone before it could end it, or NATS not answering the
//! create, so that the gateway could not tell what was stored) is queued
//! again by the sweep instead: it was announced, and its client, retrying
//! with the idempotency key, is told it was accepted. A queued job's item
//! stays in the work stream until the job ends (retries and hand-backs nak
//! it), so a job QUEUED and unchanged for `RECORD_LAG` with none is one
//! whose item never came.

use std::time::Duration;

use reelmesh_nats::{
    EventKind, JobEvent, JobRecord, JobState, NatsError, Priority, Topology, WorkItem,
    record::RECORD_LAG,
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

/// How long [`fail_until_done`] keeps trying, and its longest pause.
const FAIL_TRIES_FOR: Duration = Duration::from_secs(30 * 60);
const FAIL_MAX_PAUSE: Duration = Duration::from_secs(10);

/// Like [`fail`], but tries again while NATS fails (each failure is handed
/// to `on_error` first), pausing 100 ms doubling to 10 s, for up to 30
/// minutes. A job that moved on meanwhile (a worker took a work item that
/// was stored after all) is left alone, as `fail` does.
pub async fn fail_until_done(
    nats: &Topology,
    job: &JobRecord,
    cause: &str,
    on_error: impl Fn(&NatsError),
) -> Result<bool, NatsError> {
    let deadline = tokio::time::Instant::now() + FAIL_TRIES_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let outcome = match fail(nats, job, cause).await {
            // An earlier try that went unanswered (the caller's or ours)
            // may have failed the job after all, and then its `failed`
            // event is still to be sent.
            Ok(false) => failed_by_earlier_try(nats, job).await,
            outcome => outcome,
        };
        match outcome {
            Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                on_error(&err);
            }
            done => return done,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(FAIL_MAX_PAUSE);
    }
}

/// Whether `job` was failed as unqueued in its round (by a try whose
/// answer was lost); if so, sends its `failed` event unless it is stored.
async fn failed_by_earlier_try(nats: &Topology, job: &JobRecord) -> Result<bool, NatsError> {
    let Some(stored) = nats.jobs.get(&job.tenant, &job.id).await? else {
        return Ok(false);
    };
    let ours = stored.record.state == JobState::Failed
        && stored.record.round == job.round
        && stored
            .record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(ERROR));
    if ours {
        confirm_failed(nats, &stored.record).await?;
    }
    Ok(ours)
}

/// What the sweep did with one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mended {
    Nothing,
    /// Never queued: failed.
    Failed,
    /// Announced but its work item never stored: queued again.
    Requeued,
}

/// Mends `job`, as listed by the sweep, if it is QUEUED and unchanged for
/// `RECORD_LAG` yet was never queued whole: failed with no `queued` event
/// of its round, queued again with the event but no work item. Of one
/// failed here before, sends the `failed` event again if it is not stored.
pub async fn sweep_one(nats: &Topology, job: &JobRecord) -> Result<Mended, NatsError> {
    if job.state == JobState::Failed {
        confirm_failed(nats, job).await?;
        return Ok(Mended::Nothing);
    }
    let quiet = OffsetDateTime::now_utc() - job.updated_at;
    if job.state != JobState::Queued || quiet < RECORD_LAG {
        return Ok(Mended::Nothing);
    }
    if nats
        .events
        .holds(&JobEvent::of(job, EventKind::Queued))
        .await?
    {
        return requeue_if_itemless(nats, job).await;
    }
    tracing::warn!(job = %job.id, tenant = %job.tenant, "failing a job that was never queued");
    let cause = "its queued event and work item were never stored";
    let failed = fail(nats, job, cause).await?;
    Ok(if failed {
        Mended::Failed
    } else {
        Mended::Nothing
    })
}

/// Queues `job` again if the queues hold no item of it. The record is read
/// again after the look: a job that ended meanwhile had its item acked
/// only after its end was stored, and is left alone.
async fn requeue_if_itemless(nats: &Topology, job: &JobRecord) -> Result<Mended, NatsError> {
    if nats.work.may_hold_job(&job.tenant, &job.id).await? {
        return Ok(Mended::Nothing);
    }
    let Some(stored) = nats.jobs.get(&job.tenant, &job.id).await? else {
        return Ok(Mended::Nothing);
    };
    let record = &stored.record;
    let unchanged = record.state == JobState::Queued
        && record.round == job.round
        && record.updated_at == job.updated_at;
    if !unchanged {
        return Ok(Mended::Nothing);
    }
    tracing::warn!(job = %job.id, tenant = %job.tenant, "queueing again a job whose work item was never stored");
    let item = WorkItem::of(job);
    nats.work.enqueue(&item, Priority::of(&job.spec)).await?;
    Ok(Mended::Requeued)
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
    if nats.events.publish_unless_stored(&failed).await? {
        tracing::warn!(job = %job.id, "sent the lost failed event of a job never queued");
    }
    Ok(())
}
